"""Batch mode: embed files, folders, manifests and S3 prefixes with the stream's own engine and stages.

    inputs.py, manifest.py   what to embed: sources read lazily into inputs (ids, locations, positions)
    run.py                   the driver: the image path (images/path.py) without Kafka, backpressure by count
    records.py               a row per input: the stream's output record, or an error row
    formats.py, sinks.py     jsonl, Avro or Parquet parts written whole, and resuming from them
    progress.py              the progress bar and the summary line
    enqueue.py               the other way round: a listing or a manifest into the input topic
    commands.py              what `clip-worker embed` runs (its options: worker/cli/embed.py)
"""
