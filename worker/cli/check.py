"""`clip-worker check`: can this worker, with these settings, reach everything it needs?

A table on stdout of what answered (worker/checks.py runs the checks); the exit code and a line on
stderr name what did not, so that a deploy step or `helm test` fails on it. Like the worker, it is
configured by its environment only, so it checks exactly what a worker with that environment would use.
The libraries' log lines (the hub client's retries, OpenCLIP's progress) would bury the table, so only
warnings and errors are logged unless --verbose.
"""

from __future__ import annotations

import argparse
import logging
import sys

from worker.config import Settings

NAME = "check"
SUMMARY = "check the settings, Kafka, S3, the registry and the model; print a table"
DESCRIPTION = """\
Check that this worker's settings are valid and that everything they name answers: the Kafka
broker, the input, output and dead-letter topics and the consumer group; each allowed S3 source;
the schema registry, when one is set; and the model: its weights fetched (into model.cache_dir) and
loaded on the configured device. Each dependency gets a few seconds to answer.

Every setting comes from CLIP_WORKER_* environment variables, as for `clip-worker run`.
Prints a table of the checks; logs only warnings and errors unless --verbose. Exit code 0 when all
passed, 1 when one failed (named on stderr), 2 on an invalid setting."""
EXAMPLE = "CLIP_WORKER_MODEL__DEVICE=cpu clip-worker check"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Only --verbose: it checks the environment's settings, the ones `run` would use."""
    parser.add_argument("--verbose", action="store_true", help="log at log.level (default: warnings and errors only)")


def handle(settings: Settings, args: argparse.Namespace) -> int:
    """The table of what answered; the exit code and stderr name what did not."""
    from worker.checks import check_model, format_table, run_checks

    if not args.verbose:
        root = logging.getLogger()
        root.setLevel(max(root.level, logging.WARNING))
    results = [*run_checks(settings), check_model(settings)]
    print(format_table(results), flush=True)
    failed = [result.name for result in results if not result.ok]
    if failed:
        print(f"clip-worker check: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
