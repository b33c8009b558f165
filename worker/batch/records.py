"""The rows batch mode writes: the stream's output record for an embedded input, an error row for a
failed one (never a vector).

An embedded input's row is the very record the worker produces to its output topic
(EmbeddingEncoder.record, schemas/image-embedding.avsc), so the code that reads the stream's output
reads batch output too. Where a stream record has Kafka coordinates, a batch row has its own:

    source_uri       s3://bucket/key, or file:///absolute/path for a local file
    input_topic      the argument the input came from: a file, a folder, a manifest or an s3:// prefix
    input_partition  0
    input_offset     the input's position in that source, from 0 (a manifest's line number less one)

A failed input's row: id, source_uri (null when a manifest line named none), stage, error_class,
error (the reason), input_topic, input_partition, input_offset, failed_at (ms since the epoch).
"""

from __future__ import annotations

import time
from typing import Any

from worker.batch.inputs import BatchInput, InputError
from worker.formats.encoding import EmbeddingEncoder
from worker.formats.messages import ImageRequest, S3Uri
from worker.images.work import Work

Row = dict[str, Any]
# record() writes str(request.uri) as source_uri; a local file has no S3 URI, so every row's
# source_uri is set from the input itself, and the request carries this stand-in.
_NO_S3_URI = S3Uri(bucket="", key="")


class RowMaker:
    def __init__(self, encoder: EmbeddingEncoder) -> None:
        self._encoder = encoder

    def embedded(self, item: BatchInput, work: Work) -> Row:
        """The output record of an input whose work was embedded."""
        assert work.embedding is not None, "only embedded work has a record"
        request = ImageRequest(id=item.id, uri=_NO_S3_URI, metadata=item.metadata)
        row = self._encoder.record(request=request, embedding=work.embedding, position=work.position,
                                   sha256=work.sha256, width=work.width, height=work.height)
        row["source_uri"] = item.uri
        return row

    def failed(self, failure: InputError) -> Row:
        error = failure.error
        topic, partition, offset = failure.position.coordinates()
        return {
            "id": failure.id,
            "source_uri": failure.source_uri,
            "stage": error.stage,
            "error_class": type(error).__name__,
            "error": error.reason,
            "input_topic": topic,
            "input_partition": partition,
            "input_offset": offset,
            "failed_at": int(time.time() * 1000),
        }
