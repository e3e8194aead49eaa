"""The tasks: the embedded world, manifests, image caches, real datasets and captioning."""
