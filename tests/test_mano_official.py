"""Tests of backend.hand_model.mano_official: loading official-layout MANO pickles without chumpy.

The files are fakes written by tests/mano_fixtures.py in the official layout (chumpy objects,
sparse J_regressor, uint32 root parent). References are independent: the arrays written, smplx's
MANO layer, and a small numpy LBS written here.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.hand_model import mano_official
from backend.hand_model.constants import MANO_PARENTS, OFFICIAL_MANO_TIP_VERTEX_IDS
from backend.hand_model.mano_official import (
    ManoFileError,
    ManoNotFoundError,
    find_official_mano,
    load_official_mano,
)

try:
    from tests.mano_fixtures import fake_chumpy_modules, write_fake_official_mano, write_pickle
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from mano_fixtures import fake_chumpy_modules, write_fake_official_mano, write_pickle

REPO_ROOT = Path(__file__).resolve().parents[1]
FLOAT_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights")
FLOAT_KEYS += ("hands_components", "hands_mean")
SHAPES = {
    "v_template": (778, 3),
    "shapedirs": (778, 3, 10),
    "posedirs": (778, 3, 135),
    "J_regressor": (16, 778),
    "kintree_table": (2, 16),
    "weights": (778, 16),
    "f": (1538, 3),
    "hands_components": (45, 45),
    "hands_mean": (45,),
    "tip_vertex_ids": (5,),
}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(mano_official.MANO_DIR_ENV, raising=False)


@pytest.fixture
def read_spy(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every pickle the loader opens."""
    opened: list[Path] = []
    real = mano_official.read_mano_pickle

    def spy(path):
        opened.append(Path(path))
        return real(path)

    monkeypatch.setattr(mano_official, "read_mano_pickle", spy)
    return opened


def _expected_layout(written: dict) -> dict[str, np.ndarray]:
    """What the loader must return for arrays written by the fixture (before any left fix)."""
    kintree = np.asarray(written["kintree_table"], dtype=np.int64)
    kintree[0, 0] = -1
    return {
        "v_template": written["v_template"],
        "shapedirs": written["shapedirs"][:, :, :10],
        "posedirs": written["posedirs"],
        "J_regressor": written["J_regressor"].toarray(),
        "kintree_table": kintree,
        "weights": written["weights"],
        "f": written["f"].astype(np.int64),
        "hands_components": written["hands_components"],
        "hands_mean": written["hands_mean"],
        "tip_vertex_ids": np.array(OFFICIAL_MANO_TIP_VERTEX_IDS),
    }


def _assert_same_arrays(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert actual[key].shape == value.shape, key
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


# ------------------------------------------------------------------------------------ loading


def test_loaded_arrays_equal_written(tmp_path: Path, rng: np.random.Generator) -> None:
    written = write_fake_official_mano(tmp_path / "mano", rng, num_betas=16)
    assert "chumpy" not in sys.modules  # the fixture's stand-ins are gone
    arrays = load_official_mano(tmp_path / "mano", "right", cache_dir=tmp_path / "cache")

    assert list(arrays) == list(SHAPES)
    for key, shape in SHAPES.items():
        assert arrays[key].shape == shape, key
        assert arrays[key].flags.c_contiguous, key
    for key in FLOAT_KEYS:
        assert arrays[key].dtype == np.float64, key
    for key in ("kintree_table", "f", "tip_vertex_ids"):
        assert arrays[key].dtype == np.int64, key
    assert isinstance(arrays["J_regressor"], np.ndarray)  # dense, not scipy.sparse
    assert arrays["kintree_table"][0].tolist() == list(MANO_PARENTS)
    assert arrays["tip_vertex_ids"].tolist() == [744, 320, 443, 555, 672]
    _assert_same_arrays(arrays, _expected_layout(written["right"]))
    assert "chumpy" not in sys.modules


def test_env_var_and_models_subfolder(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The unzipped official release keeps the files in mano_v1_2/models/.
    written = write_fake_official_mano(tmp_path / "mano_v1_2" / "models", rng, sides=("right",))
    monkeypatch.setenv(mano_official.MANO_DIR_ENV, str(tmp_path / "mano_v1_2"))
    assert find_official_mano() == tmp_path / "mano_v1_2" / "models"
    arrays = load_official_mano(cache_dir=tmp_path / "cache")
    _assert_same_arrays(arrays, _expected_layout(written["right"]))


def test_find_official_mano(tmp_path: Path, rng: np.random.Generator) -> None:
    assert find_official_mano() is None  # env var unset
    assert find_official_mano(tmp_path / "missing") is None
    assert find_official_mano(tmp_path) is None  # folder without MANO files
    write_fake_official_mano(tmp_path, rng, sides=("left",))
    assert find_official_mano(tmp_path) == tmp_path


def test_module_imports_neither_chumpy_nor_torch() -> None:
    code = (
        "import sys, backend.hand_model.mano_official\n"
        "bad = [m for m in ('torch', 'chumpy', 'smplx') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


# --------------------------------------------------------------------- smplx and numpy LBS


def _rodrigues(axis_angle: np.ndarray) -> np.ndarray:
    """(N, 3) axis-angle -> (N, 3, 3) rotation matrices, R = I + sin(t) K + (1 - cos(t)) K^2."""
    angle = np.linalg.norm(axis_angle, axis=1)[:, None, None]
    axis = axis_angle / np.maximum(np.linalg.norm(axis_angle, axis=1, keepdims=True), 1e-12)
    k = np.zeros((len(axis), 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(0, 2, 1)
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def _numpy_lbs(
    arrays: dict[str, np.ndarray], betas: np.ndarray, pose: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """MANO forward in plain numpy. betas (10,), pose (16, 3) -> vertices (V, 3), joints (16, 3)."""
    v_shaped = arrays["v_template"] + arrays["shapedirs"] @ betas  # (V, 3) shape blend
    joints = arrays["J_regressor"] @ v_shaped  # (16, 3) rest joints
    rot = _rodrigues(pose)  # (16, 3, 3)
    pose_feature = (rot[1:] - np.eye(3)).reshape(-1)  # (135,) from (R - I) of joints 1..15
    v_posed = v_shaped + arrays["posedirs"] @ pose_feature  # (V, 3) pose correctives
    world = np.zeros((16, 4, 4))  # (16, 4, 4) joint frames along the kinematic chain
    for j, parent in enumerate(MANO_PARENTS):
        local = np.eye(4)
        local[:3, :3] = rot[j]
        local[:3, 3] = joints[j] - (joints[parent] if parent >= 0 else 0.0)
        world[j] = local if parent < 0 else world[parent] @ local
    skin = world.copy()  # (16, 4, 4) rest pose -> posed, relative to each rest joint
    skin[:, :3, 3] -= np.einsum("jab,jb->ja", world[:, :3, :3], joints)
    per_vertex = np.einsum("vj,jab->vab", arrays["weights"], skin)  # (V, 4, 4)
    vertices = np.einsum("vab,vb->va", per_vertex[:, :3, :3], v_posed) + per_vertex[:, :3, 3]
    return vertices, world[:, :3, 3]


@pytest.mark.parametrize("side", ["right", "left"])
def test_smplx_mano_matches_numpy_lbs(tmp_path: Path, rng: np.random.Generator, side: str) -> None:
    torch = pytest.importorskip("torch")
    smplx = pytest.importorskip("smplx")
    from smplx.utils import Struct

    write_fake_official_mano(tmp_path / "mano", rng)
    arrays = load_official_mano(tmp_path / "mano", side, cache_dir=tmp_path / "cache")
    model = smplx.MANO(
        model_path=str(tmp_path / "mano"),
        data_struct=Struct(**arrays),
        is_rhand=side == "right",
        use_pca=False,
        flat_hand_mean=True,
        dtype=torch.float64,
    )
    assert model.parents.tolist() == list(MANO_PARENTS)
    assert model.faces_tensor.shape == (1538, 3)

    betas = rng.normal(scale=1.5, size=10)
    pose = rng.normal(scale=0.5, size=(16, 3))
    with torch.no_grad():
        out = model(
            betas=torch.from_numpy(betas)[None],
            global_orient=torch.from_numpy(pose[0])[None],
            hand_pose=torch.from_numpy(pose[1:].reshape(1, 45)),
        )
    vertices, joints = _numpy_lbs(arrays, betas, pose)
    assert np.abs(vertices).max() > 0.01  # a real hand-sized mesh, not all zeros
    np.testing.assert_allclose(out.vertices[0].numpy(), vertices, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.joints[0, :16].numpy(), joints, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- left-hand fix


def test_left_bug_is_fixed_against_right(tmp_path: Path, rng: np.random.Generator) -> None:
    written = write_fake_official_mano(tmp_path, rng, left_bug=True)
    right = load_official_mano(tmp_path, "right", cache_dir=tmp_path / "cache")
    left = load_official_mano(tmp_path, "left", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(left["shapedirs"][:, 0, :], -right["shapedirs"][:, 0, :])
    np.testing.assert_array_equal(left["shapedirs"][:, 1:, :], written["left"]["shapedirs"][:, 1:])
    expected = _expected_layout(written["left"])
    expected["shapedirs"] = left["shapedirs"]
    _assert_same_arrays(left, expected)


def test_fixed_left_file_is_not_flipped(tmp_path: Path, rng: np.random.Generator) -> None:
    written = write_fake_official_mano(tmp_path, rng, left_bug=False)
    left = load_official_mano(tmp_path, "left", cache_dir=tmp_path / "cache")
    right = load_official_mano(tmp_path, "right", cache_dir=tmp_path / "cache")
    _assert_same_arrays(left, _expected_layout(written["left"]))
    np.testing.assert_array_equal(left["shapedirs"][:, 0, :], -right["shapedirs"][:, 0, :])


def test_left_alone_is_flipped_unconditionally(tmp_path: Path, rng: np.random.Generator) -> None:
    written = write_fake_official_mano(tmp_path, rng, sides=("left",), left_bug=True)
    left = load_official_mano(tmp_path, "left", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(
        left["shapedirs"][:, 0, :], -written["left"]["shapedirs"][:, 0, :]
    )


# ----------------------------------------------------------------------------------- the cache


def test_second_load_comes_from_cache(
    tmp_path: Path, rng: np.random.Generator, read_spy: list[Path]
) -> None:
    write_fake_official_mano(tmp_path / "mano", rng, sides=("right",))
    first = load_official_mano(tmp_path / "mano", cache_dir=tmp_path / "cache")
    assert len(read_spy) == 1
    (entry,) = (tmp_path / "cache").glob("*.npz")
    with np.load(entry, allow_pickle=False) as npz:  # no pickles inside
        assert set(npz.files) == set(SHAPES)

    second = load_official_mano(tmp_path / "mano", cache_dir=tmp_path / "cache")
    assert len(read_spy) == 1  # the pickle was not opened again
    _assert_same_arrays(second, first)
    for key in first:
        assert second[key].dtype == first[key].dtype, key


def test_changed_pkl_invalidates_cache(
    tmp_path: Path, rng: np.random.Generator, read_spy: list[Path]
) -> None:
    folder, cache = tmp_path / "mano", tmp_path / "cache"
    write_fake_official_mano(folder, rng, sides=("right",))
    load_official_mano(folder, cache_dir=cache)
    pkl = folder / "MANO_RIGHT.pkl"

    stat = pkl.stat()  # touch: same content, newer mtime
    os.utime(pkl, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    load_official_mano(folder, cache_dir=cache)
    assert len(read_spy) == 2
    assert len(list(cache.glob("*.npz"))) == 1  # the stale entry was replaced

    # New content (same size: same shapes), with an mtime set apart from the previous one.
    rewritten = write_fake_official_mano(folder, np.random.default_rng(99), sides=("right",))
    os.utime(pkl, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000_000))
    arrays = load_official_mano(folder, cache_dir=cache)
    assert len(read_spy) == 3
    _assert_same_arrays(arrays, _expected_layout(rewritten["right"]))


def test_left_cache_depends_on_right_file(
    tmp_path: Path, rng: np.random.Generator, read_spy: list[Path]
) -> None:
    write_fake_official_mano(tmp_path, rng)
    load_official_mano(tmp_path, "left", cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in read_spy) == ["MANO_LEFT.pkl", "MANO_RIGHT.pkl"]
    load_official_mano(tmp_path, "left", cache_dir=tmp_path / "cache")
    assert len(read_spy) == 2
    (tmp_path / "MANO_RIGHT.pkl").unlink()  # the fix now has no reference: a new entry
    load_official_mano(tmp_path, "left", cache_dir=tmp_path / "cache")
    assert len(read_spy) == 3


def test_default_cache_locations(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = write_fake_official_mano(tmp_path / "mano", rng, sides=("right",))
    load_official_mano(tmp_path / "mano")
    assert len(list((tmp_path / "mano" / ".hamr_cache").glob("mano_right_*.npz"))) == 1

    # MANO folder not writable: fall back to $XDG_CACHE_HOME/hamr.
    real = mano_official._ensure_writable_dir
    monkeypatch.setattr(
        mano_official,
        "_ensure_writable_dir",
        lambda path: False if path.parent == tmp_path / "other" else real(path),
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "MANO_RIGHT.pkl").write_bytes(
        (tmp_path / "mano" / "MANO_RIGHT.pkl").read_bytes()
    )
    arrays = load_official_mano(tmp_path / "other")
    assert not (tmp_path / "other" / ".hamr_cache").exists()
    assert len(list((tmp_path / "xdg" / "hamr").glob("mano_right_*.npz"))) == 1
    _assert_same_arrays(arrays, _expected_layout(written["right"]))


def test_damaged_cache_is_rebuilt(
    tmp_path: Path, rng: np.random.Generator, read_spy: list[Path]
) -> None:
    write_fake_official_mano(tmp_path / "mano", rng, sides=("right",))
    first = load_official_mano(tmp_path / "mano", cache_dir=tmp_path / "cache")
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(b"not a zip file")
    again = load_official_mano(tmp_path / "mano", cache_dir=tmp_path / "cache")
    assert len(read_spy) == 2
    _assert_same_arrays(again, first)


# ---------------------------------------------------------------------------------- the errors


def test_no_folder_and_no_env_var() -> None:
    with pytest.raises(ManoNotFoundError, match="HAMR_MANO_DIR") as info:
        load_official_mano()
    assert isinstance(info.value, FileNotFoundError)


def test_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_official_mano(tmp_path / "nowhere")
    monkeypatch.setenv(mano_official.MANO_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ManoNotFoundError, match=r"\$HAMR_MANO_DIR .*nowhere"):
        load_official_mano()


def test_missing_side_file(tmp_path: Path, rng: np.random.Generator) -> None:
    write_fake_official_mano(tmp_path, rng, sides=("right",))
    with pytest.raises(ManoNotFoundError, match="MANO_LEFT.pkl not found"):
        load_official_mano(tmp_path, "left", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="'right' or 'left'"):
        load_official_mano(tmp_path, "both", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_pickle(tmp_path: Path, rng: np.random.Generator, keep: float) -> None:
    write_fake_official_mano(tmp_path, rng, sides=("right",))
    pkl = tmp_path / "MANO_RIGHT.pkl"
    data = pkl.read_bytes()
    pkl.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ManoFileError, match="truncated or corrupt"):
        load_official_mano(tmp_path, cache_dir=tmp_path / "cache")


def test_garbage_file(tmp_path: Path) -> None:
    (tmp_path / "MANO_RIGHT.pkl").write_bytes(b"\x00 this is not a pickle")
    with pytest.raises(ManoFileError, match="MANO_RIGHT.pkl is not a readable MANO pickle"):
        load_official_mano(tmp_path, cache_dir=tmp_path / "cache")


class _Hostile:
    """Its pickle calls `func(*args)` on load."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_hostile_pickle_is_refused(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    hostile = {
        "os.system": _Hostile(os.system, command),
        "builtins.eval": _Hostile(eval, f"__import__('os').system({command!r})"),
        "subprocess.Popen": _Hostile(subprocess.Popen, ["touch", str(marker)]),
    }[kind]
    folder = tmp_path / "mano"
    write_pickle(folder / "MANO_RIGHT.pkl", {"v_template": np.zeros((778, 3)), "x": hostile})
    with pytest.raises(ManoFileError, match="refusing to load .*MANO_RIGHT.pkl") as info:
        load_official_mano(folder, cache_dir=tmp_path / "cache")
    assert "which a MANO file never contains" in str(info.value)
    assert not marker.exists()


def test_unknown_chumpy_class_is_refused_clearly(tmp_path: Path, rng: np.random.Generator) -> None:
    with fake_chumpy_modules() as (ch_class, _):
        attrs = {"__module__": "chumpy.ch", "__qualname__": "Strange"}
        strange = type("Strange", (ch_class,), attrs)
        sys.modules["chumpy.ch"].Strange = strange
        write_pickle(tmp_path / "MANO_RIGHT.pkl", {"shapedirs": strange(x=np.zeros(3))})
    with pytest.raises(ManoFileError, match="'shapedirs' is a chumpy.ch.Strange object"):
        mano_official.read_mano_pickle(tmp_path / "MANO_RIGHT.pkl")


def test_list_payload(tmp_path: Path) -> None:
    write_pickle(tmp_path / "MANO_RIGHT.pkl", [np.zeros((778, 3))])
    with pytest.raises(ManoFileError, match="holds a list, not the dict"):
        load_official_mano(tmp_path, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("v_template", np.zeros((777, 3)), r"'v_template' has shape \(777, 3\)"),
        ("weights", np.zeros((777, 16)), r"'weights' has shape \(777, 16\)"),
        ("shapedirs", np.zeros((778, 3, 8)), r"'shapedirs' has shape \(778, 3, 8\)"),
        ("posedirs", np.zeros((778, 3, 134)), r"'posedirs' has shape"),
        ("J_regressor", np.zeros((15, 778)), r"'J_regressor' has shape"),
        ("f", np.full((1538, 3), 778, dtype=np.uint32), r"'f' indexes vertices 778\.\.778"),
        ("kintree_table", np.zeros((2, 16), dtype=np.int64), "not MANO's kinematic tree"),
        ("hands_mean", np.zeros(44), r"'hands_mean' has shape"),
        ("v_template", np.full((778, 3), np.nan), "NaN"),
    ],
)
def test_wrong_arrays(
    tmp_path: Path, rng: np.random.Generator, key: str, value: np.ndarray, message: str
) -> None:
    write_fake_official_mano(tmp_path, rng, sides=("right",), overrides={key: value})
    with pytest.raises(ManoFileError, match=message) as info:
        load_official_mano(tmp_path, cache_dir=tmp_path / "cache")
    assert "MANO_RIGHT.pkl" in str(info.value)


def test_missing_key(tmp_path: Path) -> None:
    write_pickle(tmp_path / "MANO_RIGHT.pkl", {"v_template": np.zeros((778, 3))})
    with pytest.raises(ManoFileError, match="lacks shapedirs, posedirs"):
        load_official_mano(tmp_path, cache_dir=tmp_path / "cache")


def test_python3_protocol5_file_loads(tmp_path: Path, rng: np.random.Generator) -> None:
    """Files re-saved without chumpy (plain arrays, newer pickle protocols) load as well."""
    written = write_fake_official_mano(tmp_path / "orig", rng, sides=("right",))
    plain = dict(written["right"])
    with open(tmp_path / "MANO_RIGHT.pkl", "wb") as file:
        pickle.dump(plain, file, protocol=5)
    arrays = load_official_mano(tmp_path, cache_dir=tmp_path / "cache")
    _assert_same_arrays(arrays, _expected_layout(written["right"]))
