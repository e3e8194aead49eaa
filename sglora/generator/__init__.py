"""SG-LoRA's generator: the semantic prior, the CVAE, sampling LoRAs, candidates per method."""
