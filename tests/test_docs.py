"""The docs point at things that exist (#24 in part): every picture the README and docs/*.md
show is a file, every `python -m MODULE` they name is a module of this project that answers
`--help`, and every `--option` written after it in the same command is one its `--help` lists."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python -m ((?:backend|training|tools|benchmarks)[\w.]*)([^\n`|]*)")


def _commands() -> dict[str, set[str]]:
    """{module: the --options written after it anywhere in the docs}."""
    found: dict[str, set[str]] = {}
    for doc in DOCS:
        for module, rest in COMMAND.findall(doc.read_text()):
            options = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest))
            found.setdefault(module, set()).update(options)
    return found


def test_every_picture_the_docs_show_exists() -> None:
    missing = []
    for doc in DOCS:
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", doc.read_text()):
            if not target.startswith("http") and not (doc.parent / target).is_file():
                missing.append(f"{doc.name}: {target}")
    assert missing == []


HELP_ALL = """
import contextlib, io, json, runpy, sys
out = {}
for module in sys.argv[1:]:
    buf = io.StringIO()
    sys.argv = [module, "--help"]
    code = 0
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code or 0
    out[module] = [code, buf.getvalue()]
print("HELP_JSON " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, list]:
    """{module: [exit code, its --help text]}, every module in one process (torch once)."""
    import json

    proc = subprocess.run(
        [sys.executable, "-c", HELP_ALL, *sorted(_commands())],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("HELP_JSON ")]
    assert line, proc.stderr[-3000:]
    return json.loads(line[-1][len("HELP_JSON ") :])


@pytest.mark.parametrize("module", sorted(_commands()))
def test_every_module_the_docs_run_exists_and_takes_its_options(module: str, helps) -> None:
    assert importlib.util.find_spec(module) is not None, module
    code, text = helps[module]
    assert code == 0, text[-2000:]
    unknown = sorted(o for o in _commands()[module] if o not in text)
    assert unknown == [], f"{module} --help does not list {unknown}"
