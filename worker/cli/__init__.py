"""`clip-worker` / `python -m worker`: run the streaming worker, or one of its tools.

    clip-worker [run]                run the Kafka worker (settings from CLIP_WORKER_* env vars)
    clip-worker check                check the settings, Kafka, S3, the registry and the model; print a table
    clip-worker embed SOURCE...      embed files, folders, manifests or s3:// prefixes once
    clip-worker enqueue SOURCE...    produce an s3:// prefix or a manifest into the input topic
    clip-worker replay [FILTER...]   dead letters back to the input, once their cause is fixed
    clip-worker fetch-model          fetch the configured model weights into the cache, and exit

Each command is a module of this package holding its options and what it runs (the Command protocol
below), so that `clip-worker COMMAND --help` shows that command's options only, another command's
option is refused, and a new command is one new module added to COMMANDS.

Options may come between a command's sources, as they could when the command line was one flat
parser. Settings come from the environment for every command and are read before the command runs,
so an invalid one exits 2 naming its variable whatever the command.

Exit codes: 0 after a clean shutdown (or all checks passed), 1 on a fatal error (or a failed
check, or a failed input, or model weights that could not be fetched), 2 on an invalid setting or option.

torch, torchvision and open_clip (seconds of imports) are imported by the commands that load the
model when they run, not here: --version, --help, an invalid setting, replay and enqueue answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from worker import __version__
from worker.cli import check, embed, enqueue, fetch_model, replay, run
from worker.config import Settings, load_settings
from worker.errors import ClientWedged, ConfigError, FatalError, RetryableError
from worker.logs import configure_logging

log = logging.getLogger("worker")


class Command(Protocol):
    """A command module: its name, a line for `clip-worker --help`, a paragraph and one example for its
    own --help, its options, and what it runs once the settings have been read."""

    NAME: str
    SUMMARY: str
    DESCRIPTION: str
    EXAMPLE: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def handle(self, settings: Settings, args: argparse.Namespace) -> int: ...


COMMANDS: tuple[Command, ...] = (run, check, embed, enqueue, replay, fetch_model)
DEFAULT_COMMAND = run.NAME


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `clip-worker`: what a container runs
        args = parser.parse_args([DEFAULT_COMMAND])
    command = next(command for command in COMMANDS if args.command == command.NAME)
    try:
        settings = load_settings()
        configure_logging(settings.log)
        return command.handle(settings, args)
    except ConfigError as exc:
        print(f"clip-worker: {exc}", file=sys.stderr)
        return 2
    except ClientWedged as exc:  # the error it was stopping for, if any, is its context
        log.error("stopping: %s%s", exc, f" (while stopping for: {exc.__context__})" if exc.__context__ else "")
        logging.shutdown()
        os._exit(1)  # a wedged librdkafka client can hang its own destructor at interpreter exit
    except (FatalError, RetryableError) as exc:  # a tool's Kafka call that failed too: one line, no traceback
        log.error("stopping: %s", exc)
        return 1
    except Exception:  # through the log, so that a JSON log stays JSON
        log.critical("stopping on an unexpected error", exc_info=True)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clip-worker", description="Run the streaming embedding worker, or one of its tools.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"With no command, clip-worker runs the worker.\n\nexample:\n  clip-worker {check.NAME}\n\n"
               "`clip-worker COMMAND --help` shows that command's options.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND",
                                     parser_class=_CommandParser)
    for command in COMMANDS:
        sub = commands.add_parser(command.NAME, help=command.SUMMARY, description=command.DESCRIPTION,
                                  epilog=f"example:\n  {command.EXAMPLE}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(sub)
    return parser


class _CommandParser(argparse.ArgumentParser):
    """A command's parser. Options may come between its positionals (`embed a.jpg --output out b.jpg`),
    and an argument it does not know is refused by it, with its own usage rather than clip-worker's."""

    _parsing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        if self._parsing:  # parse_intermixed_args calls back in here, once for each of its two passes
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_intermixed_args(args, namespace), []
        finally:
            self._parsing = False
