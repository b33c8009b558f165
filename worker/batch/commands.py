"""What `clip-worker embed` runs: every input of its sources embedded, the rows to stdout or to parts.

The command's options, and their checks before anything is loaded, are worker/cli/embed.py's; this
module takes them as EmbedOptions, so that a test or a script can run the same embed without a
command line. The engine and the batch run (torch with them) are imported only once the run starts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from worker.batch.formats import FormatName, part_format
from worker.batch.inputs import InputSource, read_inputs
from worker.batch.progress import Progress, Tally
from worker.batch.sinks import PartSink, RowSink, StdoutSink
from worker.config import Settings
from worker.formats.encoding import embedding_schema
from worker.s3.reader import S3Reader, make_s3_client

if TYPE_CHECKING:
    from worker.engine import Embedder

DEFAULT_PART_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class EmbedOptions:
    sources: tuple[InputSource, ...]
    output: Path | None = None
    format: FormatName = "jsonl"
    part_size: int = DEFAULT_PART_SIZE
    overwrite: bool = False


def embed(
    settings: Settings, options: EmbedOptions, *, embedder: Embedder | None = None, s3_client: Any | None = None,
    stdout: TextIO | None = None, stderr: TextIO | None = None,
) -> Tally:
    """Embed every input of `options`; rows without an output folder go to `stdout`, the summary line to
    `stderr` (default: the process's). Loads the model (unless given) only once the output has been checked."""
    from worker.batch.run import BatchRun
    from worker.engine import Embedder, frozen_heap, share_cores

    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    sink: RowSink
    written: set[str] = set()
    if options.output is None:
        sink = StdoutSink(stdout)
    else:
        fmt = part_format(options.format, schema=embedding_schema(settings.model.output_field))
        parts = PartSink(options.output, fmt=fmt, part_size=options.part_size, overwrite=options.overwrite)
        sink, written = parts, parts.written_ids()
    if embedder is None:  # this process's own: it shares the cores with the preprocess workers
        embedder = Embedder.load(settings.model)
        share_cores(embedder.device, preprocess_workers=settings.model.preprocess_workers)
    s3 = S3Reader(client=s3_client or make_s3_client(settings.s3), settings=settings.s3)
    progress = Progress(stderr)
    run = BatchRun(settings=settings, embedder=embedder, sink=sink, written=written, progress=progress, s3=s3)
    try:
        with frozen_heap():
            run.run(read_inputs(options.sources, s3=s3))
    finally:
        sink.close()
        progress.close()
        print(progress.tally.summary(), file=stderr, flush=True)
    return progress.tally
