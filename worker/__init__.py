"""clip-embedding-worker: image references from Kafka in, OpenCLIP embeddings to Kafka out."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clip-embedding-worker")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+source"
