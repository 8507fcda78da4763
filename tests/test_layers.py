"""The layout's rules, checked on the import graph (ast, every import, those inside functions too;
`if TYPE_CHECKING:` blocks excluded, since they never run):

- no import cycle inside `backend/` or `hamr_blender/`;
- the backend's stages import only their own layer or the ones below (LAYERS): nothing below
  the pipelines imports a pipeline, nothing but the CLI imports the HTTP service, nothing
  imports the CLI; the renderer imports the camera module, never the reverse;
- `backend` never imports `training`; bpy only through the CLI's `blend`;
- `hamr_blender/io/` (the pure half of the extension) never imports bpy, mathutils or torch,
  nor the bpy half; nothing in the extension imports torch.

`import_graph` takes any tree, so the checks are also shown to fire on small made-up trees.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# backend's top-level modules and packages by layer: a module may import its own layer and those
# below it, never one above (the data path: decode -> detect -> crop -> network -> fit -> camera
# -> JSON, with the pipelines running the stages and the entry points on top)
LAYERS = {
    "errors": 0, "options": 0, "camera": 0, "crop": 0, "hand_model": 0, "schema": 0, "media": 0,
    "render": 1, "network": 1,
    "detect": 2, "fuse": 2,
    "track": 3,
    "pipeline": 4, "demo": 4,
    "service": 5,
    "cli": 6,
}  # fmt: skip
PURE_FORBIDDEN = ("bpy", "mathutils", "torch", "hamr_blender.blender")


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (anywhere but under `if TYPE_CHECKING:`)."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(
    root: Path, packages: tuple[str, ...], missing: list[str] | None = None
) -> dict[str, set[str]]:
    """{module: the modules it imports} for every .py file under root/<package>, with relative
    imports resolved; `from pkg import name` counts as importing pkg.name when that is a module
    of the tree, else pkg. Imports from outside the tree are kept as their full dotted name.
    A relative import of a module the tree does not have is added to `missing`, if given."""
    files = {
        _module_name(root, path): path
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    }
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        base = name.split(".") if is_package else name.split(".")[:-1]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                child = f"{module}.{alias.name}"
                targets.add(child if child in files else module)
                if node.level and missing is not None and child not in files:
                    if module not in files:
                        missing.append(f"{name}: from {module} import {alias.name}")
        graph[name] = {t for t in targets if t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among the graph's own modules (one path per strongly connected set)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "backend" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for each backend module a importing a backend module b of a higher layer, or of
    a top-level part that LAYERS does not place."""
    bad = []
    for module, targets in sorted(graph.items()):
        if not module.startswith("backend."):
            continue
        own = _layer(module)
        for target in sorted(targets):
            if not target.startswith("backend."):
                continue
            theirs = _layer(target)
            if own is None or theirs is None or theirs > own:
                bad.append(f"{module} -> {target}")
    return bad


def forbidden_imports(graph: dict[str, set[str]], prefix: str, forbidden: tuple[str, ...]):
    """'a -> b' for each module under `prefix` importing one of `forbidden` (or below it)."""
    return [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        if module == prefix or module.startswith(prefix + ".")
        for target in sorted(targets)
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    ]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT, ("backend", "hamr_blender"))


# ----------------------------------------------------------------------------- the project


def test_no_import_cycles(graph) -> None:
    assert cycles(graph) == []


def test_every_relative_import_names_a_module_of_the_tree() -> None:
    """A file moved without its relative imports fixed fails here, not first inside Blender."""
    missing: list[str] = []
    import_graph(ROOT, ("backend", "hamr_blender"), missing)
    assert missing == []


def test_backend_stages_import_only_their_layer_or_below(graph) -> None:
    assert layer_violations(graph) == []


def test_only_the_cli_imports_the_service_and_nothing_imports_the_cli(graph) -> None:
    outside = {
        m: t for m, t in graph.items() if not m.startswith(("backend.service", "backend.cli"))
    }
    assert forbidden_imports(outside, "backend", ("backend.service", "backend.cli")) == []
    assert forbidden_imports(graph, "backend.service", ("backend.cli",)) == []


def test_detect_and_track_never_reach_a_pipeline(graph) -> None:
    """Not even through another module: the pipelines sit above the stages they run."""
    for start in sorted(m for m in graph if m.startswith(("backend.detect", "backend.track"))):
        seen, todo = set(), [start]
        while todo:
            for target in graph.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        assert not {m for m in seen if m.startswith("backend.pipeline")}, start


def test_backend_never_imports_training_or_bpy_outside_the_cli(graph) -> None:
    assert forbidden_imports(graph, "backend", ("training",)) == []
    not_cli = {m: t for m, t in graph.items() if m != "backend.cli"}
    assert forbidden_imports(not_cli, "backend", ("bpy", "hamr_blender")) == []


def test_the_extension_pure_half_imports_no_bpy_or_torch(graph) -> None:
    pure = [m for m in graph if m.startswith("hamr_blender.io")]
    assert len(pure) >= 6  # __init__ and its five modules
    assert forbidden_imports(graph, "hamr_blender.io", PURE_FORBIDDEN) == []
    assert forbidden_imports(graph, "hamr_blender", ("torch", "backend")) == []


def test_every_backend_part_has_a_layer() -> None:
    parts = {
        p.stem if p.is_file() else p.name
        for p in (ROOT / "backend").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    assert parts == set(LAYERS)


# ----------------------------------------------------------------------------- the checks fire


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """A tree of modules from {path: source}; every folder a package."""
    for name, text in files.items():
        path = tmp_path / name
        for folder in path.relative_to(tmp_path).parents:
            if folder != Path("."):
                (tmp_path / folder).mkdir(parents=True, exist_ok=True)
                (tmp_path / folder / "__init__.py").touch()
        path.write_text(text)
    return tmp_path


def test_the_checks_fire_on_made_up_trees(tmp_path: Path) -> None:
    """A cycle hidden in a function, a stage importing a pipeline, a pure module importing
    mathutils or the bpy half, a relative import of a module that is not there: each is found;
    TYPE_CHECKING imports are not counted."""
    files = {
        "backend/detect/__init__.py": "from .network import find\n",
        "backend/detect/network.py": "def find():\n    from backend.pipeline import photo\n",
        "backend/pipeline/photo.py": "from backend.detect import find\n",
        "backend/cli.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from backend.pipeline import photo\n",
        "hamr_blender/io/client.py": "import json\nfrom ..blender import rig\n",
        "hamr_blender/io/convert.py": "import numpy as np\nimport mathutils\nfrom .gone import x\n",
        "hamr_blender/blender/rig.py": "import bpy\nfrom ..io import client\n",
    }
    missing: list[str] = []
    graph = import_graph(_tree(tmp_path, files), ("backend", "hamr_blender"), missing)
    assert cycles(graph) == [
        ["backend.detect", "backend.detect.network", "backend.pipeline.photo"],
        ["hamr_blender.blender.rig", "hamr_blender.io.client"],
    ]
    assert layer_violations(graph) == ["backend.detect.network -> backend.pipeline.photo"]
    assert graph["backend.cli"] == {"typing"}
    assert graph["hamr_blender.blender.rig"] == {"bpy", "hamr_blender.io.client"}
    assert forbidden_imports(graph, "hamr_blender.io", PURE_FORBIDDEN) == [
        "hamr_blender.io.client -> hamr_blender.blender.rig",
        "hamr_blender.io.convert -> mathutils",
    ]
    assert missing == ["hamr_blender.io.convert: from hamr_blender.io.gone import x"]


# ----------------------------------------------------------------------------- one home per schema


def test_backend_json_is_what_the_extension_parses(predictor, sample_photo, sample_box, hand_video):
    """Each schema is written in one place on each side (backend.schema, hamr_blender.io.payload):
    the photo pipeline's output, a video's and a rig's parse in the extension to the same
    numbers, and both sides name the same schemas."""
    from backend import schema
    from backend.media.image import load_image
    from backend.options import HandRequest
    from backend.pipeline.video import VideoOptions, process_video
    from hamr_blender.io import payload

    assert (payload.PREDICTION_SCHEMA, payload.VIDEO_SCHEMA, payload.RIG_SCHEMA) == (
        schema.PREDICTION_SCHEMA,
        schema.VIDEO_SCHEMA,
        schema.RIG_SCHEMA,
    )
    image, _ = load_image(sample_photo)
    doc = predictor.predict(image, [HandRequest(sample_box, "left"), HandRequest(sample_box)])
    parsed = payload.parse_prediction(doc)
    assert (parsed.width, parsed.height) == (image.shape[1], image.shape[0])
    assert [h.side for h in parsed.hands] == [h["side"] for h in doc["hands"]]
    for got, sent in zip(parsed.hands, doc["hands"], strict=True):
        assert got.pose_axis_angle.tolist() == sent["pose_axis_angle"]
        assert got.betas.tolist() == sent["betas"] and got.transl.tolist() == sent["transl"]
        assert schema.Hand.from_json(sent).to_json() == sent  # the record round-trips too
    options = VideoOptions(boxes=[hand_video.boxes[0]], min_score=0.0, refine=False)
    video = process_video(predictor, hand_video.path, options)
    tracks = payload.video_tracks(payload.parse_video(video))
    assert [t.track for t in tracks] == [0]
    assert tracks[0].frame_indices.tolist() == [f["index"] for f in video["frames"]]
    rig = payload.parse_rig(schema.rig_json("right"))
    assert rig.side == "right" and rig.joint_names[0] == "wrist"
