"""The ``detkd`` command: ``detkd <command> [options]``; ``detkd <command> --help`` for each.

Installed by ``pip install .`` as a console script (setup.cfg ``[options.entry_points]``); the
scripts in tools/ run the same functions from a checkout.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module under detkd.cli, one-line summary)
COMMANDS = {
    "train": ("train", "train a detector (Faster R-CNN, RetinaNet, FCOS, SSDlite, SSD), plain or distilled"),
    "eval": ("eval", "evaluate a detector checkpoint on its config's validation split"),
    "predict": ("predict", "run a trained detector on images: detections.json and pictures"),
    "export": ("export", "export a trained detector to ONNX or TorchScript, checked against eager"),
    "report": ("report", "speed/accuracy report of several detectors"),
    "demo": ("demo", "the distillation demo on the embedded data (needs a detkd checkout)"),
    "train-cls": ("train_cls", "train an image classifier, plain or distilled"),
}


def usage() -> str:
    import detkd

    lines = [f"usage: detkd <command> [options]   (detkd {detkd.__version__})", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "detkd <command> --help shows the options of each."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from detkd.utils.cli import run_cli

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        import detkd

        print(detkd.__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}'; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"detkd.cli.{COMMANDS[name][0]}")
    parser = module.build_parser()
    parser.prog = f"detkd {name}"
    return run_cli(module.main, parser, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
