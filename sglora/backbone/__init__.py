"""The CLIP backbone: loading and encoding, the tiny offline CLIP, its pretraining, task embeddings."""
