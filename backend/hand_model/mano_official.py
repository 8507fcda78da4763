"""Load the official MANO model files (MANO_RIGHT.pkl / MANO_LEFT.pkl) without chumpy.

The official files are Python 2 pickles whose arrays are partly `chumpy` objects, and chumpy does
not run on current numpy and Python. This module reads them with a restricted unpickler that allows
only numpy array reconstruction, scipy sparse matrices, a few builtins and chumpy classes; chumpy
objects become small local stand-ins that are evaluated to numpy arrays afterwards. Anything else a
pickle asks for (`os.system`, `builtins.eval`, ...) is refused, so a hostile file cannot run code.

The result is a dict in the MANO array layout that `smplx.MANO(data_struct=Struct(**arrays))`
accepts, validated and converted once, then cached as an `.npz` (no pickles inside) keyed by the
source file's size and modification time.

It never imports chumpy or torch: numpy, scipy and the standard library only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from .constants import (
    MANO_PARENTS,
    NUM_BETAS,
    NUM_JOINTS,
    NUM_POSE_CORRECTIVES,
    OFFICIAL_MANO_TIP_VERTEX_IDS,
    check_side,
)

logger = logging.getLogger(__name__)

MANO_DIR_ENV = "HAMR_MANO_DIR"
MANO_URL = "https://mano.is.tue.mpg.de"
MANO_FILE_NAMES: dict[str, str] = {"right": "MANO_RIGHT.pkl", "left": "MANO_LEFT.pkl"}
NUM_MANO_VERTICES = 778  # the official mesh; OFFICIAL_MANO_TIP_VERTEX_IDS index into it
NUM_HAND_POSE = 3 * (NUM_JOINTS - 1)  # 45 axis-angle values of the 15 finger joints

# Keys of the returned dict, in order; all but tip_vertex_ids come from the pickle.
MANO_ARRAY_KEYS: tuple[str, ...] = (
    "v_template", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights", "f",
    "hands_components", "hands_mean", "tip_vertex_ids",
)  # fmt: skip
_PICKLE_KEYS = MANO_ARRAY_KEYS[:-1]

# Where inside the given folder the pkl files may sit: the folder itself, or the `models/` folder
# of the unzipped official release (mano_v1_2/models), or smplx's `mano/` convention.
_SEARCH_SUBDIRS: tuple[str, ...] = ("", "models", "mano")

_CACHE_FORMAT_VERSION = 1  # bump when the cached layout changes, so old caches are ignored
_CACHE_SUBDIR = ".hamr_cache"

# The left file is taken as buggy when ||L_x - R_x|| <= tol * ||R_x|| (see _fix_left_shapedirs):
# a correct left has L_x = -R_x, i.e. a relative difference of 2.
_LEFT_BUG_REL_TOL = 0.1


class ManoFileError(ValueError):
    """A MANO file exists but cannot be used: corrupt, hostile, or not in the MANO layout."""


class ManoNotFoundError(FileNotFoundError):
    """The MANO folder or the requested side's file is not where it was looked for."""


# ----------------------------------------------------------------------------------------------
# Restricted unpickling


class _ChumpyNode:
    """Stand-in for one chumpy class: keeps the pickled state; `_node_to_array` evaluates it."""

    chumpy_class = "chumpy.ch.Ch"  # overridden per subclass by _chumpy_stand_in

    def __new__(cls) -> _ChumpyNode:  # no arguments: chumpy pickles carry none
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _SparseNode:
    """Stand-in for a scipy sparse matrix; rebuilt from its (data, indices, indptr, shape)."""

    sparse_format = "csc"

    def __new__(cls) -> _SparseNode:
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _CscNode(_SparseNode):
    sparse_format = "csc"


class _CsrNode(_SparseNode):
    sparse_format = "csr"


_CHUMPY_STAND_INS: dict[str, type[_ChumpyNode]] = {}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _chumpy_stand_in(qualified_name: str) -> type[_ChumpyNode]:
    """The stand-in class for one chumpy class, e.g. 'chumpy.reordering.Select'."""
    if qualified_name not in _CHUMPY_STAND_INS:
        name = qualified_name.rsplit(".", 1)[-1]
        _CHUMPY_STAND_INS[qualified_name] = type(
            name, (_ChumpyNode,), {"chumpy_class": qualified_name, "__module__": __name__}
        )
    return _CHUMPY_STAND_INS[qualified_name]


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copy_reg._reconstructor restricted to what chumpy and scipy objects use: object.__new__."""
    if (
        base is object
        and state is None
        and isinstance(cls, type)
        and issubclass(cls, (_ChumpyNode, _SparseNode))
    ):
        return cls.__new__(cls)
    raise pickle.UnpicklingError(f"unexpected copy_reg._reconstructor({cls!r}, {base!r}, ...)")


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """_codecs.encode as Python 3 writes bytes into protocol-2 pickles: latin-1 only."""
    if (
        not isinstance(text, str)
        or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1")
        or errors != "strict"
    ):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode(..., {encoding!r}, {errors!r})")
    return text.encode("latin-1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object for every global a MANO pickle may reference.

    numpy's own reconstruct functions are taken from how this numpy pickles, so files written by
    numpy 1.x (`numpy.core`) and 2.x (`numpy._core`) both load whichever numpy is installed.
    """
    reconstruct = np.zeros(1).__reduce__()[0]  # multiarray._reconstruct
    scalar = np.float64(0).__reduce__()[0]  # multiarray.scalar
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numeric._frombuffer (protocol 5)
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("copy_reg", "_reconstructor"): _reconstructor,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    for builtins_module in ("__builtin__", "builtins"):
        allowed[(builtins_module, "object")] = object
        allowed[(builtins_module, "set")] = set  # chumpy's _dirty_vars
        allowed[(builtins_module, "frozenset")] = frozenset
    for fmt, node in (("csc", _CscNode), ("csr", _CsrNode)):
        for module in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}", "scipy.sparse"):
            allowed[(module, f"{fmt}_matrix")] = node
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of `_ALLOWED_GLOBALS` and chumpy class names."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 str -> latin-1, as numpy expects
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if (module == "chumpy" or module.startswith("chumpy.")) and _IDENTIFIER.fullmatch(name):
            return _chumpy_stand_in(f"{module}.{name}")
        raise ManoFileError(
            f"refusing to load {self._source}: the pickle references {module}.{name}, which a "
            f"MANO file never contains. Use the MANO_RIGHT.pkl / MANO_LEFT.pkl from {MANO_URL}."
        )


# ----------------------------------------------------------------------------------------------
# chumpy / sparse stand-ins -> numpy


def _shape_term(value: Any) -> tuple[int, ...]:
    """A chumpy shape-like term (int, tuple, list or array) as a tuple of ints."""
    return tuple(int(v) for v in np.atleast_1d(np.asarray(value)).ravel())


def _chumpy_rules() -> dict[str, Callable[[dict[str, Any], Callable[[Any], np.ndarray]], Any]]:
    """chumpy class -> how its value follows from its pickled state (`ev` evaluates a sub-term).

    Leaf `Ch` objects hold their array in 'x'; the others are the derived nodes that can appear in
    model files (Select/Reshape/transpose from chumpy/reordering.py, arithmetic from ch_ops.py),
    computed as their `compute_r` does.
    """

    def select(s: dict[str, Any], ev: Callable[[Any], np.ndarray]) -> np.ndarray:
        idxs = np.asarray(s["idxs"])
        if idxs.dtype.kind not in "iu":
            raise ValueError(f"Select.idxs has dtype {idxs.dtype}, expected integers")
        result = ev(s["a"]).ravel()[idxs]
        if "preferred_shape" in s:
            result = result.reshape(_shape_term(s["preferred_shape"]))
        return result

    return {
        "chumpy.ch.Ch": lambda s, ev: ev(s["x"]),
        "chumpy.reordering.Select": select,
        "chumpy.reordering.Reshape": lambda s, ev: ev(s["a"]).reshape(_shape_term(s["newshape"])),
        "chumpy.reordering.transpose": lambda s, ev: np.transpose(
            ev(s["a"]), None if s.get("axes") is None else _shape_term(s["axes"])
        ),
        "chumpy.ch_ops.add": lambda s, ev: ev(s["x1"]) + ev(s["x2"]),
        "chumpy.ch_ops.subtract": lambda s, ev: ev(s["x1"]) - ev(s["x2"]),
        "chumpy.ch_ops.multiply": lambda s, ev: ev(s["x1"]) * ev(s["x2"]),
        "chumpy.ch_ops.divide": lambda s, ev: ev(s["x1"]) / ev(s["x2"]),
        "chumpy.ch_ops.negative": lambda s, ev: -ev(s["x"]),
    }


_CHUMPY_RULES = _chumpy_rules()


def _sparse_to_dense(node: _SparseNode) -> np.ndarray:
    """Rebuild a pickled scipy csc/csr matrix from its state and return it dense."""
    state = getattr(node, "state", None)
    if not isinstance(state, dict):
        raise ValueError("sparse matrix without a state dict")
    shape = state.get("_shape", state.get("shape"))
    cls = scipy.sparse.csc_matrix if node.sparse_format == "csc" else scipy.sparse.csr_matrix
    parts = (np.asarray(state["data"]), np.asarray(state["indices"]), np.asarray(state["indptr"]))
    return cls(parts, shape=_shape_term(shape)).toarray()


def _to_array(value: Any, where: str, depth: int = 0) -> np.ndarray:
    """Turn a pickled value (ndarray, chumpy stand-in, sparse stand-in, number, list) into an array.

    Raises ManoFileError naming `where` for what cannot be turned into an array.
    """
    if depth > 64:
        raise ManoFileError(f"{where}: chumpy expression nested too deep (or cyclic)")
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, _SparseNode):
        try:
            return _sparse_to_dense(value)
        except Exception as exc:
            raise ManoFileError(f"{where}: unreadable sparse matrix ({exc})") from exc
    if isinstance(value, _ChumpyNode):
        rule = _CHUMPY_RULES.get(value.chumpy_class)
        if rule is None:
            raise ManoFileError(
                f"{where} is a {value.chumpy_class} object, which this loader cannot turn into an "
                f"array (it understands {', '.join(sorted(_CHUMPY_RULES))}). Re-save the file "
                "with plain numpy arrays, or use the original files from " + MANO_URL
            )
        state = getattr(value, "state", None)
        if not isinstance(state, dict):
            raise ManoFileError(f"{where}: {value.chumpy_class} object without a state dict")
        try:
            return np.asarray(rule(state, lambda sub: _to_array(sub, where, depth + 1)))
        except ManoFileError:
            raise
        except KeyError as exc:
            raise ManoFileError(
                f"{where}: {value.chumpy_class} object lacks its {exc} term; the file is corrupt"
            ) from exc
        except Exception as exc:
            raise ManoFileError(f"{where}: cannot evaluate {value.chumpy_class} ({exc})") from exc
    if isinstance(value, (bool, int, float, list, tuple)):
        return np.asarray(value)
    raise ManoFileError(f"{where} is a {type(value).__name__}, not an array")


def read_mano_pickle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an official MANO pickle with the restricted unpickler.

    Returns the file's dict with every chumpy object evaluated to a numpy array and every sparse
    matrix made dense; other values (e.g. the strings 'bs_style', 'bs_type') are kept as they are.
    Raises ManoFileError for a corrupt, truncated or hostile file or a payload that is not a dict.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManoFileError(f"cannot read {path}: {exc}") from exc
    try:
        payload = _RestrictedUnpickler(io.BytesIO(data), path).load()
    except ManoFileError:
        raise
    except Exception as exc:  # truncated or garbled pickles raise anything from EOFError on
        raise ManoFileError(
            f"{path} is not a readable MANO pickle ({type(exc).__name__}: {exc}); the file is "
            f"truncated or corrupt: download it again from {MANO_URL}"
        ) from exc
    if not isinstance(payload, dict):
        raise ManoFileError(
            f"{path} holds a {type(payload).__name__}, not the dict of arrays of a MANO file"
        )
    converted: dict[str, Any] = {}
    for key, value in payload.items():
        where = f"{path}: '{key}'"
        needs_array = isinstance(value, (_ChumpyNode, _SparseNode))
        converted[str(key)] = _to_array(value, where) if needs_array else value
    return converted


# ----------------------------------------------------------------------------------------------
# Validation into the MANO array layout


def _numeric(raw: Mapping[str, Any], name: str, source: Path) -> np.ndarray:
    array = _to_array(raw[name], f"{source}: '{name}'")
    if array.dtype.kind not in "biuf":
        raise ManoFileError(f"{source}: '{name}' has dtype {array.dtype}, expected numbers")
    return array


def _float_array(raw: Mapping[str, Any], name: str, source: Path) -> np.ndarray:
    array = np.ascontiguousarray(_numeric(raw, name, source), dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ManoFileError(f"{source}: '{name}' contains NaN or infinite values")
    return array


def _int_array(raw: Mapping[str, Any], name: str, source: Path) -> np.ndarray:
    array = _numeric(raw, name, source)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ManoFileError(f"{source}: '{name}' holds non-integer values, expected indices")
    return np.ascontiguousarray(array, dtype=np.int64)


def _check_shape(
    array: np.ndarray, name: str, expected: tuple[int, ...], source: Path, why: str
) -> None:
    if array.shape != expected:
        raise ManoFileError(
            f"{source}: '{name}' has shape {array.shape}, expected {expected} ({why}); "
            f"this is not an official MANO file: get MANO_RIGHT.pkl / MANO_LEFT.pkl from {MANO_URL}"
        )


def _to_mano_layout(raw: Mapping[str, Any], source: Path) -> dict[str, np.ndarray]:
    """Validate and convert a MANO dict into the layout of `load_official_mano`.

    `source` only names the file in error messages. Shapes (V = 778 vertices, F faces):
    v_template (V, 3), shapedirs (V, 3, >=10) -> first 10 kept, posedirs (V, 3, 135),
    J_regressor (16, V) sparse or dense -> dense, kintree_table (2, 16), weights (V, 16),
    f (F, 3), hands_components (45, 45), hands_mean (45,).
    """
    missing = [key for key in _PICKLE_KEYS if key not in raw]
    if missing:
        raise ManoFileError(
            f"{source} lacks {', '.join(missing)}; a MANO file holds {', '.join(_PICKLE_KEYS)}"
        )
    num_v = NUM_MANO_VERTICES
    out: dict[str, np.ndarray] = {}

    out["v_template"] = _float_array(raw, "v_template", source)
    _check_shape(out["v_template"], "v_template", (num_v, 3), source, "the MANO mesh's vertices")

    shapedirs = _float_array(raw, "shapedirs", source)
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (num_v, 3) or shapedirs.shape[2] < NUM_BETAS:
        why = f"shape blend shapes, at least {NUM_BETAS}"
        _check_shape(shapedirs, "shapedirs", (num_v, 3, NUM_BETAS), source, why)
    out["shapedirs"] = np.ascontiguousarray(shapedirs[:, :, :NUM_BETAS])

    out["posedirs"] = _float_array(raw, "posedirs", source)
    shape = (num_v, 3, NUM_POSE_CORRECTIVES)
    _check_shape(out["posedirs"], "posedirs", shape, source, "pose correctives")

    out["J_regressor"] = _float_array(raw, "J_regressor", source)
    _check_shape(out["J_regressor"], "J_regressor", (NUM_JOINTS, num_v), source, "joint regressor")

    kintree = _int_array(raw, "kintree_table", source)
    _check_shape(kintree, "kintree_table", (2, NUM_JOINTS), source, "parents and joint ids")
    parents_ok = tuple(kintree[0, 1:].tolist()) == tuple(MANO_PARENTS[1:])
    if not parents_ok or not np.array_equal(kintree[1], np.arange(NUM_JOINTS)):
        raise ManoFileError(
            f"{source}: 'kintree_table' is {kintree.tolist()}, not MANO's kinematic tree "
            f"(parents {list(MANO_PARENTS)} with any root value, joint ids 0..15)"
        )
    kintree[0, 0] = -1  # the file's root parent is 4294967295 (uint32 -1); smplx resets it anyway
    out["kintree_table"] = kintree

    out["weights"] = _float_array(raw, "weights", source)
    _check_shape(out["weights"], "weights", (num_v, NUM_JOINTS), source, "skinning weights")

    faces = _int_array(raw, "f", source)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        _check_shape(faces, "f", (1538, 3), source, "triangles")
    if faces.min() < 0 or faces.max() >= num_v:
        raise ManoFileError(
            f"{source}: 'f' indexes vertices {faces.min()}..{faces.max()}, outside 0..{num_v - 1}"
        )
    out["f"] = faces

    out["hands_components"] = _float_array(raw, "hands_components", source)
    shape = (NUM_HAND_POSE, NUM_HAND_POSE)
    _check_shape(out["hands_components"], "hands_components", shape, source, "pose PCA basis")
    out["hands_mean"] = _float_array(raw, "hands_mean", source)
    _check_shape(out["hands_mean"], "hands_mean", (NUM_HAND_POSE,), source, "mean hand pose")

    out["tip_vertex_ids"] = np.asarray(OFFICIAL_MANO_TIP_VERTEX_IDS, dtype=np.int64)
    return out


def _fix_left_shapedirs(left_shapedirs: np.ndarray, right_shapedirs: np.ndarray | None) -> bool:
    """Undo the sign bug of the official MANO_LEFT.pkl in place; return whether it flipped.

    The left model is the right one mirrored in x, so its shape directions should satisfy
    left[:, 0, :] = -right[:, 0, :]. The released MANO_LEFT.pkl instead stores
    left[:, 0, :] = right[:, 0, :] (the right model's x-component, not negated), so betas widen the
    left hand towards the wrong side. left_shapedirs, right_shapedirs: (778, 3, 10).

    With the right model at hand, the x-component is negated only when it (nearly) equals the
    right's: ||L_x - R_x|| <= 0.1 ||R_x||. A fixed file (L_x = -R_x, relative difference 2) is
    left alone. Without the right model there is nothing to compare with; every released
    MANO_LEFT.pkl (v1.2 and earlier) carries the bug, so the flip is then applied unconditionally.
    """
    left_x = left_shapedirs[:, 0, :]
    if right_shapedirs is None:
        left_x *= -1.0
        return True
    right_x = right_shapedirs[:, 0, :]
    scale = float(np.linalg.norm(right_x))
    if scale == 0.0 or np.linalg.norm(left_x - right_x) > _LEFT_BUG_REL_TOL * scale:
        return False
    left_x *= -1.0
    return True


# ----------------------------------------------------------------------------------------------
# Locating files and the cache


def _candidate_dirs(folder: Path) -> list[Path]:
    return [folder / sub if sub else folder for sub in _SEARCH_SUBDIRS]


def _locate(folder: Path) -> Path | None:
    """The first of folder, folder/models, folder/mano that holds a MANO_*.pkl, else None."""
    for candidate in _candidate_dirs(folder):
        if any((candidate / name).is_file() for name in MANO_FILE_NAMES.values()):
            return candidate
    return None


def find_official_mano(folder: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder holding MANO_RIGHT.pkl and/or MANO_LEFT.pkl, or None when there is none.

    `folder` defaults to $HAMR_MANO_DIR. The files may sit in the folder itself or in its
    `models/` (the unzipped official release) or `mano/` subfolder. Never raises for a missing or
    empty folder: that is the normal case on a machine without MANO.
    """
    if folder is None:
        folder = os.environ.get(MANO_DIR_ENV) or None
    if folder is None:
        return None
    path = Path(folder).expanduser()
    return _locate(path) if path.is_dir() else None


def _resolve_mano_dir(folder: str | os.PathLike[str] | None) -> Path:
    """The folder to load from; raises ManoNotFoundError when it is not given or missing."""
    origin = "the given MANO folder"
    if folder is None:
        folder = os.environ.get(MANO_DIR_ENV) or None
        origin = f"${MANO_DIR_ENV}"
    if folder is None:
        raise ManoNotFoundError(
            f"no MANO folder given and {MANO_DIR_ENV} is not set. Download MANO from {MANO_URL}, "
            "unzip it, and pass the folder holding MANO_RIGHT.pkl / MANO_LEFT.pkl or set "
            f"{MANO_DIR_ENV} to it"
        )
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ManoNotFoundError(
            f"{origin} {path} does not exist or is not a folder; point it to the folder holding "
            f"MANO_RIGHT.pkl / MANO_LEFT.pkl (download MANO from {MANO_URL})"
        )
    return _locate(path) or path


def _ensure_writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _default_cache_dirs(mano_dir: Path) -> list[Path]:
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return [mano_dir / _CACHE_SUBDIR, Path(xdg) / "hamr"]


def _cache_dir_for(mano_dir: Path, cache_dir: str | os.PathLike[str] | None) -> Path | None:
    """The writable cache folder to use, or None (with a warning) when there is none."""
    candidates = [Path(cache_dir).expanduser()] if cache_dir is not None else []
    candidates = candidates or _default_cache_dirs(mano_dir)
    for candidate in candidates:
        if _ensure_writable_dir(candidate):
            return candidate
    logger.warning("no writable cache folder among %s; MANO will not be cached", candidates)
    return None


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _stat_key(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _cache_prefix(pkl: Path, side: str) -> str:
    """Cache file names start with the side and a digest of the source path (one entry each)."""
    return f"mano_{side}_{_digest(str(pkl.resolve()), 12)}_"


def _cache_name(pkl: Path, side: str, companion: Path | None) -> str:
    """File name of the cache entry for `pkl`; changes whenever the pkl (or companion) changes.

    `companion` is the right-hand file when loading the left one: the left-hand fix depends on it.
    """
    key = f"v{_CACHE_FORMAT_VERSION}|{_stat_key(pkl)}"
    key += f"|{_stat_key(companion)}" if companion is not None else "|no-right"
    return f"{_cache_prefix(pkl, side)}{_digest(key, 16)}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache entry, or None (with a warning) when it is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {key: npz[key] for key in npz.files}
        return _to_mano_layout(raw, path)
    except Exception as exc:  # a damaged cache is rebuilt from the pkl, never fatal
        logger.warning("ignoring unreadable MANO cache %s (%s)", path, exc)
        return None


def _write_cache(path: Path, prefix: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write `arrays` to `path` atomically and remove older entries with the same `prefix`."""
    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False
        ) as tmp:
            tmp_name = tmp.name
            np.savez(tmp, **arrays)
        os.chmod(tmp_name, 0o644)  # NamedTemporaryFile makes it 0600; others may share the folder
        os.replace(tmp_name, path)
        tmp_name = None
        for old in path.parent.glob(f"{prefix}*.npz"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not write the MANO cache %s (%s)", path, exc)
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Public entry point


def load_official_mano(
    folder: str | os.PathLike[str] | None = None,
    side: str = "right",
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, np.ndarray]:
    """Load one side of the official MANO model as plain numpy arrays, in the MANO layout.

    Args:
        folder: folder holding MANO_RIGHT.pkl / MANO_LEFT.pkl (or their `models/` or `mano/`
            subfolder); defaults to $HAMR_MANO_DIR.
        side: 'right' or 'left'.
        cache_dir: where the converted arrays are cached as .npz; defaults to `.hamr_cache` inside
            the MANO folder when writable, else $XDG_CACHE_HOME/hamr (~/.cache/hamr). The entry is
            keyed by the pkl's size and mtime (and the right pkl's, for the left side), so an
            updated file is converted again.

    Returns:
        A dict that `smplx.MANO(data_struct=smplx.utils.Struct(**arrays))` accepts (V = 778):
        'v_template' (V, 3) float64 metres; 'shapedirs' (V, 3, 10) float64; 'posedirs'
        (V, 3, 135) float64; 'J_regressor' (16, V) float64, dense; 'kintree_table' (2, 16) int64
        with the root's parent normalised to -1 (smplx overwrites parents[0] with -1 anyway);
        'weights' (V, 16) float64; 'f' (1538, 3) int64; 'hands_components' (45, 45) float64;
        'hands_mean' (45,) float64; 'tip_vertex_ids' (5,) int64, thumb..pinky
        (OFFICIAL_MANO_TIP_VERTEX_IDS).

    The left model gets the shapedirs sign fix described in `_fix_left_shapedirs`: its
    shapedirs[:, 0, :] is negated when it equals the right model's (or always, when
    MANO_RIGHT.pkl is absent, since every released MANO_LEFT.pkl has the bug).

    Raises:
        ManoNotFoundError (a FileNotFoundError): no folder and no $HAMR_MANO_DIR, a missing
            folder, or a missing MANO_<SIDE>.pkl.
        ManoFileError (a ValueError): a corrupt, truncated or hostile pickle, a payload that is
            not a dict, or arrays of the wrong shapes.
    """
    side = check_side(side)
    mano_dir = _resolve_mano_dir(folder)
    file_name = MANO_FILE_NAMES[side]
    pkl = mano_dir / file_name
    if not pkl.is_file():
        looked = ", ".join(str(d) for d in _candidate_dirs(mano_dir))
        raise ManoNotFoundError(
            f"{file_name} not found (looked in {looked}); copy it from the MANO release "
            f"({MANO_URL}) into {mano_dir}"
        )
    right_pkl = mano_dir / MANO_FILE_NAMES["right"]
    companion = right_pkl if side == "left" and right_pkl.is_file() else None

    cache_folder = _cache_dir_for(mano_dir, cache_dir)
    cache_path = None
    if cache_folder is not None:
        cache_path = cache_folder / _cache_name(pkl, side, companion)
        if cache_path.is_file():
            cached = _read_cache(cache_path)
            if cached is not None:
                return cached

    arrays = _to_mano_layout(read_mano_pickle(pkl), pkl)
    if side == "left":
        right_shapedirs = None
        if companion is not None:
            right_shapedirs = load_official_mano(mano_dir, "right", cache_dir)["shapedirs"]
        if _fix_left_shapedirs(arrays["shapedirs"], right_shapedirs):
            logger.info("negated shapedirs[:, 0, :] of %s (the known MANO_LEFT sign bug)", pkl)

    if cache_path is not None:
        _write_cache(cache_path, _cache_prefix(pkl, side), arrays)
    return arrays
