"""Fake official MANO files for tests: random but valid arrays in the official pickle layout.

`write_fake_official_mano` writes MANO_RIGHT.pkl / MANO_LEFT.pkl the way the official release
stores them: a protocol-2 pickle of a dict whose shapedirs and v_template are chumpy objects (class
`chumpy.ch.Ch`, reconstructed via copy_reg with a state dict holding 'x'), posedirs a derived
chumpy node (`chumpy.reordering.Select`), J_regressor a scipy csc_matrix, and kintree_table with the
uint32 root parent 4294967295. chumpy itself is never imported: `fake_chumpy_modules` puts
stand-in `chumpy` modules into sys.modules only while pickling, then removes them, so a loader
under test cannot import them.
"""

from __future__ import annotations

import contextlib
import copyreg
import pickle
import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

NUM_VERTICES = 778
NUM_FACES = 1538
MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
ROOT_PARENT_IN_FILE = 4294967295  # uint32(-1), as the official files store the root's parent
FILE_NAMES = {"right": "MANO_RIGHT.pkl", "left": "MANO_LEFT.pkl"}
_CHUMPY_MODULES = ("chumpy", "chumpy.ch", "chumpy.reordering")


class _FakeCh:
    """Pickles like chumpy.ch.Ch: class chumpy.ch.Ch, a state dict holding 'x' and chumpy's keys.

    style 'reconstructor' writes copy_reg._reconstructor(Ch, object, None) + BUILD (what Python 2
    wrote for chumpy objects); style 'newobj' writes the NEWOBJ opcode + BUILD.
    """

    def __init__(self, style: str = "reconstructor", **terms: Any) -> None:
        self._style = style
        self.terms = {
            "_dirty_vars": set(),
            "_itr": None,
            "_depends_on_deps": {},
            "_make_dense": False,
            "_make_sparse": False,
            **terms,
        }

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        if self._style == "newobj":
            return (copyreg.__newobj__, (type(self),), self.terms)
        return (copyreg._reconstructor, (type(self), object, None), self.terms)


@contextlib.contextmanager
def fake_chumpy_modules() -> Iterator[tuple[type[_FakeCh], type[_FakeCh]]]:
    """Register stand-in chumpy modules while pickling; restore sys.modules afterwards.

    Yields the classes that pickle as chumpy.ch.Ch and chumpy.reordering.Select (whose value is
    a.ravel()[idxs].reshape(preferred_shape)); both take a pickling style and their terms.
    """
    saved = {name: sys.modules.get(name) for name in _CHUMPY_MODULES}
    modules = {name: types.ModuleType(name) for name in _CHUMPY_MODULES}
    ch_class = type("Ch", (_FakeCh,), {"__module__": "chumpy.ch", "__qualname__": "Ch"})
    select_class = type(
        "Select", (_FakeCh,), {"__module__": "chumpy.reordering", "__qualname__": "Select"}
    )
    modules["chumpy.ch"].Ch = ch_class
    modules["chumpy.reordering"].Select = select_class
    modules["chumpy"].ch = modules["chumpy.ch"]
    modules["chumpy"].reordering = modules["chumpy.reordering"]
    sys.modules.update(modules)
    try:
        yield ch_class, select_class
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def write_pickle(path: Path, payload: Any, protocol: int = 2) -> Path:
    """Pickle `payload` to `path` (protocol 2, like the official Python 2 files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(payload, file, protocol=protocol)
    return path


def _random_right(rng: np.random.Generator, num_betas: int) -> dict[str, Any]:
    """Random arrays of a right hand in the official layout (metres)."""
    num_v, num_j = NUM_VERTICES, len(MANO_PARENTS)
    # Faces: three distinct random vertices per triangle.
    faces = np.argsort(rng.random((NUM_FACES, num_v)), axis=1)[:, :3].astype(np.uint32)
    # Joint regressor: each joint a convex combination of 20 random vertices.
    rows = np.repeat(np.arange(num_j), 20)
    cols = np.concatenate([rng.choice(num_v, 20, replace=False) for _ in range(num_j)])
    vals = rng.random(rows.size) + 0.1
    vals /= np.bincount(rows, weights=vals)[rows]
    j_regressor = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(num_j, num_v))
    weights = rng.random((num_v, num_j)) ** 4
    weights /= weights.sum(axis=1, keepdims=True)
    v_template = rng.normal(scale=0.03, size=(num_v, 3))
    kintree = np.array([MANO_PARENTS, range(num_j)], dtype=np.int64)
    kintree[0, 0] = ROOT_PARENT_IN_FILE
    return {
        "v_template": v_template,
        "shapedirs": rng.normal(scale=1e-3, size=(num_v, 3, num_betas)),
        "posedirs": rng.normal(scale=1e-3, size=(num_v, 3, 9 * (num_j - 1))),
        "J_regressor": j_regressor,
        "kintree_table": kintree.astype(np.uint32),
        "weights": weights,
        "f": faces,
        "hands_components": np.linalg.qr(rng.normal(size=(45, 45)))[0],
        "hands_mean": rng.normal(scale=0.2, size=45),
        "hands_coeffs": rng.normal(size=(32, 45)),
        "J": j_regressor @ v_template,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def _mirrored_left(
    right: Mapping[str, Any], rng: np.random.Generator, left_bug: bool
) -> dict[str, Any]:
    """The left hand as the right one mirrored in x; with left_bug, shapedirs x is NOT negated."""
    mirror = np.array([-1.0, 1.0, 1.0])
    left = dict(right)
    left["v_template"] = right["v_template"] * mirror
    shapedirs = right["shapedirs"] * mirror[None, :, None]
    if left_bug:  # the official MANO_LEFT.pkl: x-component equal to the right's
        shapedirs[:, 0, :] = right["shapedirs"][:, 0, :]
    left["shapedirs"] = shapedirs
    left["posedirs"] = rng.normal(scale=1e-3, size=right["posedirs"].shape)
    left["f"] = np.ascontiguousarray(right["f"][:, ::-1])
    left["hands_components"] = np.linalg.qr(rng.normal(size=(45, 45)))[0]
    left["hands_mean"] = rng.normal(scale=0.2, size=45)
    left["J"] = right["J_regressor"] @ left["v_template"]
    return left


def _official_payload(arrays: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Wrap arrays in chumpy stand-ins as the official files do (inside fake_chumpy_modules)."""
    ch_class = sys.modules["chumpy.ch"].Ch
    select_class = sys.modules["chumpy.reordering"].Select
    payload = dict(arrays)
    for name, style in (("shapedirs", "reconstructor"), ("v_template", "newobj")):
        if isinstance(payload.get(name), np.ndarray):
            payload[name] = ch_class(style, x=payload[name])
    posedirs = payload.get("posedirs")
    if isinstance(posedirs, np.ndarray):  # a derived node: Select over a permuted flat array
        idxs = rng.permutation(posedirs.size)
        flat = np.empty(posedirs.size)
        flat[idxs] = posedirs.ravel()
        payload["posedirs"] = select_class(
            "reconstructor",
            a=ch_class("reconstructor", x=flat),
            idxs=idxs,
            preferred_shape=posedirs.shape,
        )
    return payload


def write_fake_official_mano(
    folder: str | Path,
    rng: np.random.Generator,
    sides: Iterable[str] = ("right", "left"),
    left_bug: bool = True,
    num_betas: int = 10,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Write fake MANO_<SIDE>.pkl files into `folder` in the official layout.

    The left model is the right one mirrored in x (faces reversed, own posedirs and pose PCA);
    with `left_bug` its shapedirs[:, 0, :] equals the right's, as in the released MANO_LEFT.pkl.
    `overrides` replaces entries of every written file (e.g. a wrongly shaped 'v_template').

    Returns side -> the arrays written, as plain numpy (J_regressor as scipy csc_matrix,
    kintree_table with the root parent 4294967295, shapedirs of the left as written, i.e. buggy).
    """
    folder = Path(folder)
    right = _random_right(rng, num_betas)
    models = {"right": right, "left": _mirrored_left(right, rng, left_bug)}
    written: dict[str, dict[str, Any]] = {}
    with fake_chumpy_modules():
        for side in sides:
            arrays = {**models[side], **(overrides or {})}
            write_pickle(folder / FILE_NAMES[side], _official_payload(arrays, rng))
            written[side] = arrays
    return written
