"""README.md names only things that exist.

Every repository path it mentions, every command (``detkd <sub>``, ``make <target>``,
``python tools/x.py``), every flag after a command (read from that command's own argparse
parser), every ``--opts`` and inline config key (walked through the config dataclasses),
every relative link and anchor (README and docs/*.md), and its method table (against
``detkd.distill.methods.METHODS``). The quick start's YAML files are written out and loaded.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import importlib.util
import itertools
import re
import shlex
import types
import typing
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")  # a span may wrap onto the next line
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
CLASSIFICATION_PROGRAMS = ("train-cls", "tools/train_cls.py")  # their --opts keys are not the detection schema's


# ------------------------------------------------------------------------------------------- text


def split_markdown(text: str) -> tuple[list[tuple[str, str]], str]:
    """(fenced code blocks as (language, body), the text outside them)."""
    blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]
    return blocks, FENCE.sub("", text)


def shell_commands(body: str) -> list[list[str]]:
    """The commands of a shell snippet as token lists: continuation lines joined, comments
    dropped, one command per line and per ``&&`` / ``;`` / ``|``."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        command: list[str] = []
        for token in tokens + [";"]:
            if token in ("&&", ";", "|", "||"):
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(token)
    return commands


def expand_braces(path: str) -> list[str]:
    """``configs/{coco,voc}/x`` -> ``configs/coco/x``, ``configs/voc/x``."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for choice in m.group(1).split(",")
            for p in expand_braces(path[:m.start()] + choice + path[m.end():])]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but ``-``/``_`` dropped, spaces -> ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = split_markdown(path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", prose, re.M)}


# -------------------------------------------------------------------------------------- the repo


def ignore_patterns(repo: Path) -> list[str]:
    gitignore = repo / ".gitignore"
    lines = gitignore.read_text().splitlines() if gitignore.is_file() else []
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` (relative, ``/``-separated) lies in something .gitignore ignores: a
    generated output such as ``data/demo/val``, not a file the repository ships."""
    parts = path.strip("/").split("/")
    for pattern in patterns:
        anchored = pattern.startswith("/")
        pat = pattern.strip("/")
        if anchored:
            depth = pat.count("/") + 1
            if len(parts) >= depth and fnmatch.fnmatch("/".join(parts[:depth]), pat):
                return True
        elif any(fnmatch.fnmatch(part, pat) for part in parts):
            return True
    return False


def make_targets(repo: Path) -> set[str]:
    makefile = repo / "Makefile"
    text = makefile.read_text() if makefile.is_file() else ""
    targets = set()
    for m in re.finditer(r"^([^\s:#=$][^:#=$]*?)\s*:(?!=)", text, re.M):
        targets.update(m.group(1).split())
    return targets


def usage_flags(parser) -> set[str]:
    """The long options of an argparse parser, from its usage line (hidden options excluded)."""
    return set(re.findall(r"(--[A-Za-z0-9][\w-]*)", parser.format_usage()))


@lru_cache(maxsize=None)
def detkd_flags(sub: str) -> frozenset[str] | None:
    from detkd.cli.main import COMMANDS

    if sub not in COMMANDS:
        return None
    module = importlib.import_module(f"detkd.cli.{COMMANDS[sub][0]}")
    return frozenset(usage_flags(module.build_parser()) | {"--help"})


@lru_cache(maxsize=None)
def script_flags(path: Path) -> frozenset[str] | None:
    """The flags of a tools/ or benchmarks/ script: its ``build_parser()``, loaded from the file
    (its ``__main__`` block does not run). None when it has no ``build_parser``."""
    spec = importlib.util.spec_from_file_location(f"readme_script_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    build = getattr(module, "build_parser", None)
    return None if build is None else frozenset(usage_flags(build()) | {"--help"})


def key_classes(tp: typing.Any) -> list[type] | None:
    """The dataclasses whose fields are the keys under a value of type ``tp`` (None: any key)."""
    from detkd.config.schema import BaseDatasetConfig
    from detkd.data.build import dataset_types

    while typing.get_origin(tp) in (typing.Union, types.UnionType):  # Optional[X] -> X
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is dict or tp is typing.Any:
        return None
    if tp is BaseDatasetConfig:  # data.train / data.val: the options of every format
        return list(dataset_types().values())
    return [tp] if dataclasses.is_dataclass(tp) else []


def config_key_exists(key: str) -> bool:
    """Whether dotted ``key`` (``train.amp``, ``data.train.root``) is a key of the detection config."""
    from detkd.config.schema import Config

    classes: list[type] | None = [Config]
    for part in key.split("."):
        if classes is None:
            return True
        owners = [cls for cls in classes if part in {f.name for f in dataclasses.fields(cls)}]
        if not owners:
            return False
        classes = key_classes(typing.get_type_hints(owners[0])[part])
    return True


# ------------------------------------------------------------------------------------ the checker


def command_problems(tokens: list[str], repo: Path, all_flags: set[str]) -> list[str]:
    """Problems of one command: its program, its subcommand or make targets, its flags."""
    problems: list[str] = []
    for i, token in enumerate(tokens):
        flags: frozenset[str] | None = None
        if token == "detkd" and i + 1 < len(tokens):
            sub = tokens[i + 1]
            if sub.startswith("-"):
                return problems
            if not re.fullmatch(r"[a-z][a-z-]*", sub):  # a placeholder such as <command>
                return problems
            flags = detkd_flags(sub)
            if flags is None:
                return [f"unknown command: detkd {sub}"]
            program, start = f"detkd {sub}", i + 2
        elif token == "make" and i == 0:
            targets = make_targets(repo)
            return [f"unknown make target: make {t}" for t in tokens[1:]
                    if not t.startswith("-") and "=" not in t and t not in targets]
        elif token.endswith(".py") and token.split("/")[0] in ("tools", "benchmarks"):
            path = repo / token
            if not path.is_file():
                return [f"missing path: {token}"]
            program, start = token, i + 1
            flags = script_flags(path) if any(t.startswith("--") for t in tokens[start:]) else frozenset()
            if flags is None:
                return [f"{token} names flags but has no build_parser() to check them against"]
        else:
            continue
        all_flags.update(flags)
        rest = tokens[start:]
        for j, arg in enumerate(rest):
            if arg.startswith("--") and flags:
                name = arg.split("=", 1)[0]
                if name not in flags:
                    problems.append(f"unknown flag: {program} {name}")
            if arg == "--opts" and not program.endswith(CLASSIFICATION_PROGRAMS):
                for opt in itertools.takewhile(lambda a: not a.startswith("--"), rest[j + 1:]):
                    key = opt.split("=", 1)[0]
                    if "=" in opt and not config_key_exists(key):
                        problems.append(f"unknown config key: {program} --opts {key}")
        return problems
    return problems


def path_problems(text: str, repo: Path) -> list[str]:
    """Repository paths (``configs/...``, ``docs/...``, ``tools/...``) that do not exist; paths
    under what .gitignore ignores (generated outputs) and paths outside the repo's top-level
    folders (a user's ``runs/``, ``datasets/``) are not the repo's and are skipped."""
    patterns = ignore_patterns(repo)
    tops = sorted(p.name for p in repo.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and not is_ignored(p.name + "/", patterns))
    if not tops:
        return []
    found = re.findall(r"(?<![\w./-])((?:%s)/[\w.{},*<>/-]*)" % "|".join(map(re.escape, tops)), text)
    problems = []
    for raw in sorted(set(found)):
        raw = raw.rstrip(".,;:")
        for path in expand_braces(raw):
            if is_ignored(path, patterns):
                continue
            pattern = re.sub(r"<[^>]*>", "*", path)
            exists = any(repo.glob(pattern.rstrip("/"))) if "*" in pattern else (repo / path).exists()
            if not exists:
                problems.append(f"missing path: {path}")
    return problems


def link_problems(text: str, where: Path) -> list[str]:
    """Relative links of a markdown file (``where``) whose file or heading anchor is missing."""
    problems = []
    for m in LINK.finditer(split_markdown(text)[1]):
        target = m.group(1) or m.group(2)
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (where.parent / file).resolve() if file else where
        if not path.exists():
            problems.append(f"broken link in {where.name}: {target}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"missing anchor in {where.name}: {target}")
    return problems


def readme_problems(text: str, repo: Path = REPO, where: Path | None = None) -> list[str]:
    """Everything ``text`` (a README) names that does not exist in ``repo``."""
    from detkd.config.schema import Config

    where = where or repo / "README.md"
    sections = {f.name for f in dataclasses.fields(Config)}
    blocks, prose = split_markdown(text)
    problems: list[str] = []
    all_flags: set[str] = set()
    commands = [c for lang, body in blocks if lang in ("bash", "sh", "") for c in shell_commands(body)]
    spans = [" ".join(s.split()) for s in INLINE.findall(prose)]
    for span in spans:
        try:
            commands.append(shlex.split(span))
        except ValueError:
            pass
    for tokens in commands:
        problems += command_problems(tokens, repo, all_flags)
    for span in spans:  # a flag named alone must belong to one of the commands named
        for flag in re.findall(r"^(--[A-Za-z0-9][\w-]*)", span):
            if flag not in all_flags:
                problems.append(f"flag of no command named here: {flag}")
        m = re.fullmatch(r"([a-z_]+(?:\.[a-z_]\w*)+)(?:\s*[:=].*)?", span)
        if m and m.group(1).split(".")[0] in sections:
            if not config_key_exists(m.group(1)):
                problems.append(f"unknown config key: {m.group(1)}")
    problems += path_problems(text, repo)
    problems += link_problems(text, where)
    return list(dict.fromkeys(problems))  # a missing script is also a missing path: once


def method_table_names(text: str) -> list[str]:
    """The first column of the table under the README's '## Distillation methods'."""
    section = text.split("## Distillation methods", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, re.M)


# ------------------------------------------------------------------------------------------ tests


def test_readme_names_only_what_exists():
    problems = readme_problems(README.read_text(encoding="utf-8"))
    assert not problems, "README.md:\n" + "\n".join(problems)


@pytest.mark.parametrize("doc", sorted((REPO / "docs").glob("*.md")), ids=lambda p: p.name)
def test_docs_links_resolve(doc):
    problems = link_problems(doc.read_text(encoding="utf-8"), doc)
    assert not problems, "\n".join(problems)


def test_readme_method_table_is_the_methods_dict():
    from detkd.distill.methods import METHODS

    assert method_table_names(README.read_text(encoding="utf-8")) == list(METHODS)


def test_readme_stays_short_and_names_no_internal_issue():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for doc in (README, *sorted((REPO / "docs").glob("*.md"))):
        assert not re.search(r"\bissues? #\d+", doc.read_text(encoding="utf-8"), re.I), doc.name


def test_the_checker_catches_what_does_not_exist():
    """Each made-up name below is reported, each real one is not: the checker can fail."""
    real = """
```bash
detkd train --cfg configs/demo/student_demo.yaml --opts train.epochs=1 --output-dir runs/x
python tools/eval_det.py --cfg configs/demo/student_demo.yaml --ckpt runs/x/model_final.pth
make test
```
`detkd export --check-images`, `--ckpt`, `train.amp: true`, `data/demo/val`, [m](docs/methods.md#contents)
"""
    assert readme_problems(real) == []
    made_up = {
        "detkd train --cfg a.yaml --no-such-flag": "unknown flag: detkd train --no-such-flag",
        "detkd frobnicate --cfg a.yaml": "unknown command: detkd frobnicate",
        "make no-such-target": "unknown make target: make no-such-target",
        "python tools/no_such_tool.py --cfg a.yaml": "missing path: tools/no_such_tool.py",
        "python tools/train_det.py --cfg a.yaml --epochz 3": "unknown flag: tools/train_det.py --epochz",
        "detkd eval --cfg a.yaml --ckpt b.pth --opts train.epochz=2":
            "unknown config key: detkd eval --opts train.epochz",
        "cat configs/demo/no_such_config.yaml": "missing path: configs/demo/no_such_config.yaml",
        "cat configs/{demo,nowhere}/student_demo.yaml": "missing path: configs/nowhere/student_demo.yaml",
    }
    for command, problem in made_up.items():
        assert readme_problems(f"```bash\n{command}\n```\n") == [problem], command
    spans = {
        "`--no-such-flag`": "flag of no command named here: --no-such-flag",
        "`train.no_such_key: 1`": "unknown config key: train.no_such_key",
        "`distill.pkd.no_such_key`": "unknown config key: distill.pkd.no_such_key",
        "[x](docs/methods.md#no-such-heading)": "missing anchor in README.md: docs/methods.md#no-such-heading",
    }
    for span, problem in spans.items():
        assert readme_problems(f"see {span}\n") == [problem], span
    assert readme_problems("see [x](docs/no_such_page.md)\n") == [
        "missing path: docs/no_such_page.md", "broken link in README.md: docs/no_such_page.md"]


def test_makefile_targets_are_parsed():
    targets = make_targets(REPO)
    assert {"demo", "test", "install", "clean-venv"} <= targets
    assert not {"PYTHON", "PY", "VENV", "STAMP"} & targets  # variables, not targets


def quick_start_files(text: str) -> dict[str, str]:
    """The quick start's YAML blocks, by the file name their first comment line gives."""
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    files = {}
    for lang, body in split_markdown(section)[0]:
        m = re.match(r"# (\w+\.yaml)", body)
        if lang == "yaml" and m:
            files[m.group(1)] = body
    return files


def test_quick_start_configs_load(tmp_path, monkeypatch):
    """The quick start's mydata / teacher / student configs load as written, in a folder beside
    configs/, the teacher's saved config.yaml serving as the student's teacher.config."""
    from detkd.config.dump import dump_config
    from detkd.recipe import load_config

    files = quick_start_files(README.read_text(encoding="utf-8"))
    assert set(files) == {"mydata.yaml", "teacher.yaml", "student.yaml"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)

    teacher = load_config(tmp_path / "teacher.yaml", ["output_dir=runs/teacher"])
    assert teacher.data.train.type == "yolo" and teacher.data.val.split == "val"
    assert teacher.model.num_classes == 4 and teacher.distill is None
    (tmp_path / "runs" / "teacher").mkdir(parents=True)
    (tmp_path / "runs" / "teacher" / "config.yaml").write_text(dump_config(teacher))

    student = load_config(tmp_path / "student.yaml", ["output_dir=runs/student"])
    assert student.teacher.model == teacher.model
    assert student.teacher.checkpoint == "runs/teacher/model_final.pth"
    assert list(student.distill.methods) == ["pkd"] and student.data.train.root == "datasets/mydata"
    assert student.model.num_classes == 4 and student.model != teacher.model
    (tmp_path / "runs" / "student").mkdir()
    (tmp_path / "runs" / "student" / "config.yaml").write_text(dump_config(student))
    assert load_config(tmp_path / "runs" / "student" / "config.yaml") == student
