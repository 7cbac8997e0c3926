"""The distillation demo (detkd.experiments.demo, also tools/run_demo.py) of a detkd checkout.

The demo trains from the checkout's configs/demo/*.yaml and generates its data from
data/sources/, which a wheel does not ship: ``detkd demo`` runs it on the checkout found in
the current directory (or above it), or beside an editable install; elsewhere it says so
in one line. All options are tools/run_demo.py's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detkd.errors import DetkdError


def find_checkout() -> Path | None:
    """The root of a detkd checkout: the current directory or a parent, else the editable install's."""
    here = Path.cwd().resolve()
    candidates = [here, *here.parents, Path(__file__).resolve().parents[2]]
    for root in candidates:
        if (root / "configs" / "demo").is_dir() and (root / "data" / "sources").is_dir():
            return root
    return None


def build_parser() -> argparse.ArgumentParser:
    from detkd.experiments.demo import build_parser

    return build_parser()


def main(args: argparse.Namespace) -> int:
    from detkd.experiments.demo import main as demo_main

    root = find_checkout()
    if root is None:
        raise DetkdError("detkd demo needs a detkd checkout (its configs/demo/ and data/sources/): "
                         "git clone the repository and run 'detkd demo' (or make demo) inside it")
    return demo_main(args, repo=root)
