"""The embedding engine: image bytes to OpenCLIP image embeddings, or a typed error per record.

    emb = Embedder.load(settings.model)        # ConfigError naming the setting if anything is wrong
    prepared = emb.prepare(data)               # CPU, thread-safe, ImageError subclasses on bad bytes
    batch = emb.prepare_batch([data, ...])     # device thread: baseline JPEGs decoded on the device
    results = emb.embed([prepared, ...])       # one device thread: float32 (dim,) arrays or EmbedError

Nothing here knows about Kafka or S3: the streaming runtime and the batch CLI both drive it.
"""

from worker.engine.embedder import Embedder, EmbedResult, PreparedBatch
from worker.engine.loading import frozen_heap, share_cores
from worker.engine.preprocess import PreparedImage, PreprocessMode

__all__ = ["EmbedResult", "Embedder", "PreparedBatch", "PreparedImage", "PreprocessMode", "frozen_heap", "share_cores"]
