"""Experiments over seeds: planning, training or reusing runs, statistics and tables.

Above engine and evaluation (it calls the trainers and the report; nothing below imports
it); tools/run_experiment.py, tools/run_cls_experiment.py and tools/run_demo.py (and
``detkd demo``) are thin wrappers of it. Heavy modules (torch, training) are imported inside
functions, so ``--help`` stays fast. Modules:

* ``stats``: mean ± std (the one convention: sample std, n - 1; None for one seed), paired gains, spread, gap closed.
* ``runs``: ``train_or_reuse``: reuse a finished run of the same config (else a one-line error), else train with resume.
* ``plan``: the detection seeds experiment's groups, configs, seeds and per-run overrides.
* ``tables``: the detection experiment's per-group summary, printed table and distillation gains.
* ``detection``: the detection seeds experiment's command (tools/run_experiment.py): parser and main.
* ``demo``: the demo (tools/run_demo.py, ``detkd demo``): teacher, baseline and PKD student, gap closed, pictures.
* ``cls_plan``: the classification experiment's teachers, methods, run names and teacher overrides.
* ``cls_runs``: the classification runs as tools/train_cls.py subprocesses, skipped when finished; re-evaluation.
* ``cls_tables``: the classification table: top-1 mean ± std, per-seed values, difference to the baseline, verdict.
* ``classification``: the classification experiment's command (tools/run_cls_experiment.py): parser and main.
"""
