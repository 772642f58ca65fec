"""Ovi in plain PyTorch: the fusion DiT, its text/video/audio codecs, loaders and the pipeline."""
