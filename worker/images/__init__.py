"""The image path both drivers share: fetch -> route -> preprocess -> batcher -> device (path.py builds it)."""
