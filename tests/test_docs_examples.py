"""The worked examples of the docs are the real code: a fenced block after
``<!-- embed: PATH -->`` is that file, byte for byte; the lines of a block after
``<!-- lines of: PATH -->`` are lines of that file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md"))
BLOCK = re.compile(r"<!-- (embed|lines of): (\S+) -->\n```\w*\n(.*?)```", re.S)


def blocks():
    return [(doc.name, kind, path, body) for doc in DOCS for kind, path, body in BLOCK.findall(doc.read_text())]


def test_the_method_example_is_there():
    assert ("distillation_methods.md", "embed", "detkd/distill/methods/mimic.py") in \
        {(d, k, p) for d, k, p, _ in blocks()}


@pytest.mark.parametrize("doc, kind, path, body", blocks(), ids=lambda v: str(v)[:40])
def test_doc_example_is_the_file(doc, kind, path, body):
    text = (REPO / path).read_text()
    if kind == "embed":
        assert body == text, f"{doc}: the example of {path} differs from the file"
    else:
        lines = text.splitlines()
        assert all(line in lines for line in body.splitlines()), f"{doc}: a line of the example is not in {path}"
