#!/usr/bin/env python
"""Thin wrapper of ``detkd train-cls`` (detkd/cli/train_cls.py), for running from a checkout: see ``--help``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkd.cli.train_cls import build_parser, main, cli  # noqa: E402,F401
from detkd.utils.cli import run_cli  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(cli())
