#!/usr/bin/env python
"""Thin wrapper of the demo (detkd/experiments/demo.py, also ``detkd demo``), for running from a
checkout: see ``--help``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkd.experiments.demo import build_parser, main  # noqa: E402
from detkd.utils.cli import run_cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main, build_parser()))
