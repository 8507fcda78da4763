"""The docs point at things that exist and say what the code does (#24).

- every picture the README and docs show is a file, and every relative link leads to one;
- every `python -m MODULE` (or `torchrun ... -m MODULE`) they run is a module of this project
  that answers `--help`, and every `--option` written after it is one its `--help` lists; the
  same for every `hamr SUBCOMMAND` (its parser's help, as the generated reference holds it), and
  every `make TARGET` is a target of the Makefile;
- every number in the README's results table is a value (rounded as printed) of the JSON file
  its row names, and the table is what `python -m tools.results_table` renders from those files;
- docs/reference/ equals a fresh `python -m tools.gen_reference`;
- every option and button of the HAMR panels and preferences is named in the user guide.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(
    r"(?:python|torchrun[ \w-]*?) -m ((?:backend|training|tools|benchmarks)[\w.]*)([^\n`]*)"
)
HAMR = re.compile(
    r"(?<![\w./-])(?:\.venv/bin/)?hamr (predict|video|serve|blend|info|demo)\b([^\n`]*)"
)
MAKE = re.compile(r"(?:^|`)make ([a-z][\w-]*)", re.M)
OPTION = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


def _found(pattern: re.Pattern) -> dict[str, set[str]]:
    """{command: the --options written after it anywhere in the docs}."""
    found: dict[str, set[str]] = {}
    for doc in DOCS:
        for name, rest in pattern.findall(doc.read_text()):
            found.setdefault(name, set()).update(OPTION.findall(rest))
    return found


def _commands() -> dict[str, set[str]]:
    return _found(COMMAND)


def test_every_picture_the_docs_show_exists() -> None:
    missing = []
    for doc in DOCS:
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", doc.read_text()):
            if not target.startswith("http") and not (doc.parent / target).is_file():
                missing.append(f"{doc.name}: {target}")
    assert missing == []


def test_every_relative_link_of_the_docs_leads_to_a_file() -> None:
    missing = []
    for doc in DOCS:
        for target in re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
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


GENERATE = """
import json, sys
from tools.gen_reference import generate
print("REFERENCE_JSON " + json.dumps(generate()))
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """{file name: text} of a fresh `python -m tools.gen_reference`, in a subprocess with
    Blender's user folders in a temporary directory (it imports bpy for `hamr blend`)."""
    import os

    env = dict(os.environ)
    root = tmp_path_factory.mktemp("gen_reference")
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "BLENDER_USER_RESOURCES"):
        env[name] = str(root / name.lower())
    env.pop("COLUMNS", None)
    proc = subprocess.run(
        [sys.executable, "-c", GENERATE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REFERENCE_JSON ")]
    assert line, proc.stderr[-3000:]
    return json.loads(line[-1][len("REFERENCE_JSON ") :])


@pytest.mark.parametrize("name", ["http.md", "cli.md"])
def test_the_committed_reference_is_a_fresh_generation(name: str, reference) -> None:
    committed = (ROOT / "docs" / "reference" / name).read_text()
    assert committed == reference[name], (
        f"docs/reference/{name} is stale: run `.venv/bin/python -m tools.gen_reference`"
    )


def test_the_reference_covers_every_route_and_subcommand(reference) -> None:
    """Against the app's own route table and the parser's subcommands, not the generator's."""
    from backend.cli import build_parser
    from backend.service import create_app

    routes = {
        (method, route.path)
        for route in create_app().routes
        if route.path.startswith("/v1/")
        for method in getattr(route, "methods", ())
        if method != "HEAD"
    }
    assert len(routes) >= 8
    for method, path in routes:
        assert f"## `{method} {path}`" in reference["http.md"]
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:
        assert f"### `hamr {name}`" in reference["cli.md"]


def _hamr_help(reference: dict[str, str], sub: str) -> str:
    text = reference["cli.md"]
    start = text.index(f"### `hamr {sub}`")
    return text[start : text.index("\n### ", start + 1)]


@pytest.mark.parametrize("sub", sorted(_found(HAMR)))
def test_every_hamr_command_the_docs_run_takes_its_options(sub: str, reference) -> None:
    text = _hamr_help(reference, sub)
    unknown = sorted(o for o in _found(HAMR)[sub] if o not in text)
    assert unknown == [], f"hamr {sub} --help does not list {unknown}"


def test_every_make_target_the_docs_name_exists() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = {t for doc in DOCS for t in MAKE.findall(doc.read_text())}
    assert named >= {"demo", "test", "package"}
    assert sorted(named - targets) == []


# ----------------------------------------------------------------------------- results table
def _numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [n for v in tree.values() for n in _numbers(v)]
    if isinstance(tree, list):
        return [n for v in tree for n in _numbers(v)]
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return [float(tree)]
    return []


def _readme_table() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("<!-- results-table: begin") : text.index("<!-- results-table: end")]
    rows = [ln for ln in block.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]


def _not_in_files(rows: list[list[str]]) -> list[str]:
    """The numbers of the table's value cells that no value of their row's JSON file gives when
    rounded to the digits printed."""
    problems = []
    for cells in rows:
        source = re.search(r"\((docs/results/[\w.]+\.json)\)", cells[-1])
        if not source:
            problems.append(f"row names no JSON file: {cells[0]}")
            continue
        values = _numbers(json.loads((ROOT / source.group(1)).read_text()))
        for cell in cells[1:-1]:
            for number in re.findall(r"\d+(?:\.\d+)?", cell):
                digits = len(number.partition(".")[2])
                if not any(math.isclose(round(v, digits), float(number)) for v in values):
                    problems.append(f"{number} ({cells[0]}) is not in {source.group(1)}")
    return problems


def test_every_number_of_the_results_table_is_in_the_file_its_row_names() -> None:
    rows = _readme_table()
    assert len(rows) >= 6
    assert _not_in_files(rows) == []
    # the check fails on a number edited by hand, and on a row that names no file
    edited = [list(r) for r in rows]
    edited[0][4] = f"{float(rows[0][4]) + 0.37:.2f}"
    edited[1][-1] = "typed by hand"
    assert len(_not_in_files(edited)) == 2


def test_the_results_table_is_rendered_from_the_committed_files() -> None:
    from tools.results_table import SOURCES, load, render

    text = (ROOT / "README.md").read_text()
    assert render(load()) in text, "run `.venv/bin/python -m tools.results_table --write README.md`"
    for source in SOURCES.values():  # each file's command is named, and its flags exist
        assert source.command.split(".venv/bin/")[1] in text
        assert source.module in _commands() and "--out" in _commands()[source.module]


# ----------------------------------------------------------------------------- user guide
def test_the_user_guide_names_every_panel_option_and_preference() -> None:
    """Every property label and panel of ui.py and preferences.py (read from the source, no
    bpy), and every operator a panel there draws, appears in bold in docs/user_guide.md."""
    guide = (ROOT / "docs" / "user_guide.md").read_text()
    named = set(re.findall(r"\*\*([^*]+)\*\*", guide))
    source = ""
    for name in ("ui.py", "preferences.py"):
        source += (ROOT / "hamr_blender" / "blender" / name).read_text()
    labels = set(re.findall(r'\bname="([^"]+)"', source))
    labels |= set(re.findall(r'\(\w+_PROP, "([^"]+)"\)', source))  # the rig's sliders
    labels -= {"Box"}  # the Hand Box's four numbers, drawn without a label
    operators = set(re.findall(r'operator\("(hamr\.\w+)"', source))
    ops_source = (ROOT / "hamr_blender" / "blender" / "operators.py").read_text()
    for idname in operators:
        block = ops_source[ops_source.index(f'bl_idname = "{idname}"') :]
        labels.add(re.search(r'bl_label = "([^"]+)"', block).group(1))
    assert len(labels) >= 25
    assert sorted(labels - named) == []
