"""Build the Blender extension zip and validate it with Blender's own validator.

    python -m tools.package_extension --out dist/

Stages ``blender_manifest.toml`` next to the files of ``hamr_blender/`` (the zip's root holds the
manifest and the package's modules, as Blender expects), then runs Blender's extension tool on it
exactly as ``blender --command extension build`` and ``... validate`` do: the ``blender_ext.py``
that ships inside Blender (found in the ``bpy`` package, or given with ``--blender-ext``), with
Blender's list of valid tags. The tool needs only the standard library, so it runs with any Python
3.11+; bpy is located, not imported. Prints the zip's path.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hamr_blender"
MANIFEST = ROOT / "blender_manifest.toml"
# Files of the package that do not belong in the extension.
EXCLUDE_DIRS = {"__pycache__"}
EXCLUDE_SUFFIXES = {".pyc", ".pyo"}


class PackagingError(RuntimeError):
    """The extension could not be built or did not validate."""


def find_blender_tool() -> tuple[Path, Path | None]:
    """(blender_ext.py, tags.py) from $HAMR_BLENDER_EXT or the installed bpy package."""
    override = os.environ.get("HAMR_BLENDER_EXT")
    if override:
        ext = Path(override)
        tags = next(iter(ext.parents[3].glob("modules/_bpy_internal/extensions/tags.py")), None)
        return ext, tags
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise PackagingError(
            "Blender's extension tool was not found: install bpy (pip install bpy) or set "
            "HAMR_BLENDER_EXT to .../scripts/addons_core/bl_pkg/cli/blender_ext.py"
        )
    # bpy/__init__.py may be a stub; the scripts live in bpy/<version>/scripts
    roots = {Path(p) for p in spec.submodule_search_locations}
    roots |= {Path(spec.origin).parent} if spec.origin else set()
    candidates: list[str] = []
    for root in roots:
        for base in (root, *root.parents[:5]):
            candidates += glob.glob(str(base / "*" / "scripts" / "addons_core" / "bl_pkg" / "cli"))
            candidates += glob.glob(str(base / "scripts" / "addons_core" / "bl_pkg" / "cli"))
            if candidates:
                break
        if candidates:
            break
    if not candidates:
        raise PackagingError(f"blender_ext.py not found near the bpy package ({sorted(roots)})")
    cli = Path(sorted(candidates)[-1])
    tags = cli.parents[2] / "modules" / "_bpy_internal" / "extensions" / "tags.py"
    return cli / "blender_ext.py", tags if tags.is_file() else None


def manifest_version() -> tuple[str, str]:
    """(id, version) from the manifest's top-level keys."""
    text = MANIFEST.read_text(encoding="utf-8")
    found = {
        key: m.group(1)
        for key in ("id", "version")
        if (m := re.search(rf'^{key}\s*=\s*"([^"]+)"', text, re.MULTILINE))
    }
    if len(found) != 2:
        raise PackagingError(f"{MANIFEST} needs id and version")
    return found["id"], found["version"]


def stage(target: Path) -> Path:
    """Copy the manifest and the package's files into `target` (created); returns it."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(MANIFEST, target / MANIFEST.name)
    for src in sorted(PACKAGE.rglob("*")):
        rel = src.relative_to(PACKAGE)
        if any(part in EXCLUDE_DIRS for part in rel.parts) or src.suffix in EXCLUDE_SUFFIXES:
            continue
        dst = target / rel
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return target


def _run_tool(tool: Path, args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, str(tool), *args], capture_output=True, text=True, check=False
    )
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise PackagingError(f"blender_ext.py {args[0]} failed:\n{out}")
    return out


def build(out_dir: str | os.PathLike, validate: bool = True) -> Path:
    """Build dist/<id>-<version>.zip with Blender's tool and validate it; returns its path."""
    tool, tags = find_blender_tool()
    ext_id, version = manifest_version()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = (out_dir / f"{ext_id}-{version}.zip").resolve()
    if zip_path.exists():
        zip_path.unlink()
    tag_args = [f"--valid-tags={tags}"] if tags else []
    with tempfile.TemporaryDirectory(prefix="hamr-ext-") as tmp:
        src = stage(Path(tmp) / ext_id)
        _run_tool(
            tool,
            ["build", "--source-dir", str(src), "--output-filepath", str(zip_path), *tag_args],
        )
    if validate:
        _run_tool(tool, ["validate", str(zip_path), *tag_args])
    return zip_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.package_extension", description=__doc__)
    ap.add_argument("--out", default="dist", help="output folder (default dist/)")
    ap.add_argument("--no-validate", action="store_true", help="skip the validation step")
    args = ap.parse_args(argv)
    try:
        path = build(args.out, validate=not args.no_validate)
    except PackagingError as e:
        print(f"package_extension: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
