"""What every command-line tool shares: ``--cfg``/``--opts``/``--debug`` and one-line errors."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from detkd.errors import DetkdError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg", required=True, metavar="FILE.yaml",
                        help="config file (YAML; may inherit from others with a '_base_' key)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --opts train.epochs=2 model.num_classes=11 "
                             "(KEY VALUE pairs work too; values are parsed as YAML)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")


def one_line(exc: BaseException) -> str:
    """The error's message on one line.

    A DataLoader worker re-raises an error as ``Caught DetkdError in DataLoader worker
    process N.`` followed by the worker's traceback, ending with the original
    ``detkd.errors.DetkdError: <message>``: keep that message.
    """
    text = str(exc)
    if "\n" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    marker = f"{type(exc).__name__}: "
    if text.startswith(f"Caught {type(exc).__name__}") and marker in last:
        return last.split(marker, 1)[1]
    return " ".join(text.split())


def run_cli(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
            argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run ``main``; user errors print ``error: ...`` and exit 2."""
    args = parser.parse_args(argv)
    try:
        return main(args) or 0
    except DetkdError as exc:
        if args.debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
