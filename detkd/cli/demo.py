"""The distillation demo (tools/run_demo.py) of a detkd checkout.

The demo trains from the checkout's configs/demo/*.yaml and generates its data from
data/sources/, which a wheel does not ship: ``detkd demo`` runs the checkout's
tools/run_demo.py, found in the current directory (or above it), or beside an editable
install; elsewhere it says so in one line. All options are run_demo.py's.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from detkd.errors import DetkdError


def find_checkout() -> Path | None:
    """The root of a detkd checkout: the current directory or a parent, else the editable install's."""
    here = Path.cwd().resolve()
    candidates = [here, *here.parents, Path(__file__).resolve().parents[2]]
    for root in candidates:
        if (root / "tools" / "run_demo.py").is_file() and (root / "configs" / "demo").is_dir():
            return root
    return None


def _run_demo_module():
    root = find_checkout()
    if root is None:
        raise DetkdError("detkd demo needs a detkd checkout (its configs/demo/ and data/sources/): "
                         "git clone the repository and run 'detkd demo' (or make demo) inside it")
    spec = importlib.util.spec_from_file_location("run_demo", root / "tools" / "run_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_parser() -> argparse.ArgumentParser:
    try:
        return _run_demo_module().build_parser()
    except DetkdError as exc:  # still give --help and the one-line error on running
        parser = argparse.ArgumentParser(description=f"{__doc__}\n{exc}",
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--debug", action="store_true", help="full tracebacks on errors")
        return parser


def main(args: argparse.Namespace) -> int:
    return _run_demo_module().main(args)
