"""The experts: LoRA on CLIP, training one expert (or Oracle), the expert repository."""
