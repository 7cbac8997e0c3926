#!/usr/bin/env python
"""Thin wrapper of the classification experiment (detkd/experiments/classification.py), for
running from a checkout: see ``--help``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkd.experiments.classification import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
