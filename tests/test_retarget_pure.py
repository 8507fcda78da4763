"""The retargeting's pure half (hamr_blender.io.bone_maps, hamr_blender.io.retarget_math) under
plain pytest: hand-computed values, round trips and small stand-in rigs instead of bpy."""

from __future__ import annotations

import numpy as np
import pytest

from hamr_blender.io import bone_maps, convert, retarget_math
from hamr_blender.io.bone_maps import BoneMap, BoneMapError
from hamr_blender.io.retarget_math import RetargetError


def _rot(axis, deg):
    axis = np.asarray(axis, dtype=float)
    return convert.axis_angle_to_matrix(axis / np.linalg.norm(axis) * np.radians(deg))


def _m4(rot=None, t=(0, 0, 0)):
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = np.eye(3) if rot is None else rot, t
    return m


# ------------------------------------------------------------------------------ bone maps
def _rigify_names(generated: bool) -> set[str]:
    names = set()
    for s in "LR":
        names |= {f"DEF-hand.{s}", f"hand_fk.{s}"} if generated else {f"hand.{s}"}
        for d in ("thumb", "f_index", "f_middle", "f_ring", "f_pinky"):
            names |= {f"{d}.{k:02d}.{s}" for k in (1, 2, 3)}
    return names


def test_builtin_maps_name_the_rigs_bones() -> None:
    r = bone_maps.BUILTIN_MAPS["RIGIFY"]
    assert r.bones("left")["index1"] == "f_index.01.L"
    assert r.bones("right")["thumb3"] == "thumb.03.R"
    assert r.bones("left")["wrist"] == "DEF-hand.L" and r.wrist_control("left") == "hand_fk.L"
    m = bone_maps.BUILTIN_MAPS["MIXAMO"]
    assert m.bones("left")["index1"] == "mixamorig:LeftHandIndex1"
    assert m.bones("right")["pinky3"] == "mixamorig:RightHandPinky3"
    assert m.wrist_control("right") == "mixamorig:RightHand"  # no separate control
    h = bone_maps.BUILTIN_MAPS["HAMR"]
    assert list(h.bones("right")) == list(bone_maps.JOINTS)
    assert len(set(h.bones("right").values()) | set(h.bones("left").values())) == 32
    assert len(bone_maps.JOINTS) == 16


def test_detect_map_from_bone_names() -> None:
    assert bone_maps.detect_map(_rigify_names(True))[0] == "RIGIFY"
    assert bone_maps.detect_map(_rigify_names(False))[0] == "RIGIFY_METARIG"
    hamr = bone_maps.BUILTIN_MAPS["HAMR"]  # its own names, whatever they are
    assert bone_maps.detect_map(hamr.bones("right").values())[0] == "HAMR"
    # Mixamo with another prefix, one hand only
    names = {"mixamorig1:LeftHand"} | {
        f"mixamorig1:LeftHand{d.capitalize()}{k}" for d in bone_maps.DIGITS for k in (1, 2, 3, 4)
    }
    key, found = bone_maps.detect_map(names)
    assert key == "MIXAMO" and found.bones("left")["ring2"] == "mixamorig1:LeftHandRing2"
    assert bone_maps.fitting_sides(found, names) == ["left"]
    assert bone_maps.detect_map({"Bone", "spine", "hand.L"}) is None


def test_missing_bones_are_reported_not_guessed() -> None:
    names = _rigify_names(True) - {"f_ring.02.R", "thumb.03.R"}
    r = bone_maps.BUILTIN_MAPS["RIGIFY"]
    assert bone_maps.missing_bones(r, "right", names) == [
        "ring2 -> f_ring.02.R",
        "thumb3 -> thumb.03.R",
    ]
    assert bone_maps.missing_bones(r, "left", names) == []
    with pytest.raises(BoneMapError, match=r"lacks 2 bone\(s\) of the right hand.*ring2"):
        bone_maps.validate_map(r, "right", names)
    partial = BoneMap("P", {"right": {"wrist": "a", "index1": "b"}})
    assert "thumb3 -> (unmapped)" in bone_maps.missing_bones(partial, "right", {"a", "b"})
    with pytest.raises(BoneMapError, match="no left hand"):
        bone_maps.validate_map(partial, "left", {"a"})
    dup = BoneMap(
        "D", {"right": {j: ("x" if j in ("index1", "index2") else j) for j in bone_maps.JOINTS}}
    )
    with pytest.raises(BoneMapError, match="two joints"):
        bone_maps.validate_map(dup, "right", set(bone_maps.JOINTS) | {"x"})


def test_json_preset_round_trip_and_refusals() -> None:
    m = bone_maps.BUILTIN_MAPS["RIGIFY"]
    back = bone_maps.map_from_json(bone_maps.map_to_json(m))
    assert back.name == m.name and {s: dict(v) for s, v in back.sides.items()} == {
        s: dict(v) for s, v in m.sides.items()
    }
    with pytest.raises(BoneMapError, match="not JSON"):
        bone_maps.map_from_json("{")
    with pytest.raises(BoneMapError, match="schema"):
        bone_maps.map_from_json('{"sides": {}}')
    bad = '{"schema": "hamr.bone_map/1", "sides": {"right": {"indx1": "a"}}}'
    with pytest.raises(BoneMapError, match="unknown joint"):
        bone_maps.map_from_json(bad)
    with pytest.raises(BoneMapError, match="unknown side"):
        bone_maps.map_from_json('{"schema": "hamr.bone_map/1", "sides": {"middle": {}}}')


# ------------------------------------------------------------------------------ math
def test_hand_frame_by_hand() -> None:
    h = retarget_math.hand_frame(
        np.array([1.0, 2, 3]), np.array([1.5, 2, 5]), np.array([1.0, 2, 5]), np.array([0.2, 2, 4.8])
    )
    np.testing.assert_allclose(h[:3, 1], [0, 0, 1], atol=1e-12)  # to the middle knuckle
    np.testing.assert_allclose(h[:3, 0], [1, 0, 0], atol=1e-12)  # towards the index
    np.testing.assert_allclose(h[:3, 2], [0, -1, 0], atol=1e-12)  # x cross y
    np.testing.assert_allclose(h[:3, 3], [1, 2, 3])
    with pytest.raises(RetargetError):
        retarget_math.hand_frame(
            np.zeros(3), np.array([0, 0, 1.0]), np.array([0, 0, 2.0]), np.array([0, 0, 3.0])
        )


def test_roll_offsets_are_rolls_about_the_bone() -> None:
    rng = np.random.default_rng(0)
    r = convert.axis_angle_to_matrix(rng.normal(0, 1, size=(20, 3)))
    q = retarget_math.roll_offsets(r)
    # a rotation about y: keeps y, orthonormal
    np.testing.assert_allclose(q[:, :, 1], np.tile([0, 1, 0], (20, 1)), atol=1e-12)
    np.testing.assert_allclose(q @ np.swapaxes(q, 1, 2), np.tile(np.eye(3), (20, 1, 1)), atol=1e-12)
    # rolling a bone about its own axis by t adds t to its offset
    roll = _rot([0, 1, 0], 30)
    q2 = retarget_math.roll_offsets(r @ roll)
    np.testing.assert_allclose(q2, q @ roll, atol=1e-12)


def test_transfer_matches_direction_and_twist_across_rest_curl_and_roll() -> None:
    """Source and target bones with other rest directions (curl) and rolls: after the transfer
    each target bone's canonical frame equals the source's posed one."""
    rng = np.random.default_rng(1)
    n, j = 6, 15
    src_rest = convert.axis_angle_to_matrix(rng.normal(0, 0.3, size=(j, 3)))
    curl = _rot([1, 0, 0], 25)  # the target's fingers flexed at rest
    tgt_rest = curl @ src_rest @ _rot([0, 1, 0], 70)  # and rolled
    q_s, q_t = retarget_math.roll_offsets(src_rest), retarget_math.roll_offsets(tgt_rest)
    h_s = convert.axis_angle_to_matrix(rng.normal(0, 1, size=(n, 3)))  # source hand turned
    h_t = convert.axis_angle_to_matrix(rng.normal(0, 1, size=3))  # target hand elsewhere
    local = convert.axis_angle_to_matrix(rng.normal(0, 0.8, size=(n, j, 3)))
    src_posed = h_s[:, None] @ local @ src_rest  # in the source's armature space
    d = retarget_math.transfer_rotations(h_s, src_posed, q_s, q_t, h_t)
    f = np.swapaxes(h_s, 1, 2)[:, None] @ src_posed
    g = h_t.T @ d
    np.testing.assert_allclose(g[..., 1], f[..., 1], atol=1e-10)  # same direction in the hand
    # twist: the canonical frames coincide
    can_s = f @ np.swapaxes(q_s, 1, 2)
    can_t = g @ np.swapaxes(q_t, 1, 2)
    np.testing.assert_allclose(can_t, can_s, atol=1e-10)
    # and the rest pose maps to the rest pose's directions
    d0 = retarget_math.transfer_rotations(np.eye(3)[None], src_rest[None], q_s, q_t, np.eye(3))
    np.testing.assert_allclose(d0[0, :, :, 1], src_rest[:, :, 1], atol=1e-10)


def test_forward_kinematics_two_bones_by_hand() -> None:
    rest = np.stack([_m4(t=(0, 0, 0)), _m4(t=(0, 1, 0))])
    basis = np.tile(np.eye(4), (1, 2, 1, 1))
    basis[0, 0, :3, :3] = _rot([0, 0, 1], 90)  # root turns 90 degrees about z
    posed = retarget_math.forward_kinematics(rest, np.array([-1, 0]), basis)
    np.testing.assert_allclose(posed[0, 1, :3, 3], [-1, 0, 0], atol=1e-12)
    with pytest.raises(RetargetError):
        retarget_math.forward_kinematics(rest, np.array([1, -1]), basis)


def test_solve_chain_inverts_forward_kinematics() -> None:
    """A random 3-bone chain hanging from a static parent through an unposed middle bone: the
    solved local rotations, run through forward kinematics, give the asked-for rotations."""
    rng = np.random.default_rng(2)
    n = 5
    rots = convert.axis_angle_to_matrix(rng.normal(0, 1, size=(5, 3)))
    rest = np.stack([_m4(rots[i], rng.normal(size=3)) for i in range(5)])
    parents = np.array([-1, 0, 1, 2, 3])  # 0 static root, 1 posed, 2 unposed, 3 and 4 posed
    basis_now = np.tile(np.eye(4), (1, 5, 1, 1))
    basis_now[0, 2, :3, :3] = _rot([1, 1, 0], 20)  # the unposed bone has a pose of its own
    basis_now[0, 0, :3, :3] = _rot([0, 0, 1], 40)
    now = retarget_math.forward_kinematics(rest, parents, basis_now)[0]
    posed_idx = [1, 3, 4]
    chain = retarget_math.TargetChain(
        names=["b1", "b3", "b4"],
        rest=rest[posed_idx],
        parent_rest=rest[[0, 2, 3]],
        anchor=np.array([-1, 0, 1]),
        anchor_to_parent=np.stack([np.eye(4), np.linalg.inv(now[1]) @ now[2], np.eye(4)]),
        parent_now=now[[0, 2, 3]],
        basis_loc=np.zeros((3, 3)),
    )
    want = convert.axis_angle_to_matrix(rng.normal(0, 1, size=(n, 3, 3)))
    rot, loc = retarget_math.solve_chain(chain, want)
    basis = np.tile(basis_now, (n, 1, 1, 1))
    for k, b in enumerate(posed_idx):
        basis[:, b, :3, :3] = rot[:, k]
    posed = retarget_math.forward_kinematics(rest, parents, basis)
    np.testing.assert_allclose(posed[:, posed_idx, :3, :3], want, atol=1e-10)
    np.testing.assert_allclose(loc, 0.0)
    # a head position asked for the first bone is met too
    target = rng.normal(size=(n, 3))
    want_loc = np.full((n, 3, 3), np.nan)
    want_loc[:, 0] = target
    rot, loc = retarget_math.solve_chain(chain, want, want_loc)
    basis[:, 1, :3, 3] = loc[:, 0]
    posed = retarget_math.forward_kinematics(rest, parents, basis)
    np.testing.assert_allclose(posed[:, 1, :3, 3], target, atol=1e-10)


def test_continuous_quaternions() -> None:
    angles = np.linspace(0, 4 * np.pi, 50)
    rot = np.stack([_rot([0, 0, 1], np.degrees(a)) for a in angles])[:, None]
    q = retarget_math.continuous_quaternions(rot)
    assert np.all(np.sum(q[1:] * q[:-1], axis=-1) > 0) and q[0, 0, 0] >= 0
    np.testing.assert_allclose(convert.quaternion_to_matrix(q), rot, atol=1e-10)
    assert retarget_math.angle_between(
        np.array([1.0, 0, 0]), np.array([0, 2.0, 0])
    ) == pytest.approx(90)


# ------------------------------------------------------------------------------ fingertip reach
def _finger(rng, n):
    """n frames of one 3-bone finger along y (segments 0.4, 0.3, 0.2), turned at random."""
    segments = np.array([[[0, 0.4, 0], [0, 0.3, 0], [0, 0.2, 0]]])  # (1, 3, 3)
    rot = convert.axis_angle_to_matrix(rng.normal(0, 0.3, size=(n, 1, 3, 3)))
    base = rng.normal(0, 1, size=(n, 1, 3))
    return rot, base, segments


def test_chain_tips_by_hand() -> None:
    rot = np.tile(np.eye(3), (1, 1, 3, 1, 1))
    rot[0, 0, 2] = _rot([0, 0, 1], 90)  # the last bone turned 90 degrees about z
    segs = np.array([[[0, 0.4, 0], [0, 0.3, 0], [0, 0.2, 0]]])
    tip = retarget_math.chain_tips(rot, np.array([[[1.0, 0, 0]]]), segs)
    np.testing.assert_allclose(tip[0, 0], [1 - 0.2, 0.7, 0], atol=1e-12)


def test_reach_fingertips_meets_reachable_goals_with_small_turns() -> None:
    rng = np.random.default_rng(3)
    rot, base, segs = _finger(rng, 20)
    # goals: the tips of the same chain turned by up to ~10 degrees per bone
    moved = convert.axis_angle_to_matrix(rng.normal(0, 0.1, size=(20, 1, 3, 3))) @ rot
    goal = retarget_math.chain_tips(moved, base, segs)
    new, turn = retarget_math.reach_fingertips(rot, base, segs, goal, sigma=1e-3)
    got = retarget_math.chain_tips(new, base, segs)
    # met, except a goal beyond REACH of the chain's length (0.9), which stops there
    beyond = np.linalg.norm(goal - base, axis=-1) - retarget_math.REACH * 0.9
    assert np.all(np.linalg.norm(got - goal, axis=-1) <= np.maximum(beyond, 0) + 1e-5)
    assert (beyond < 0).sum() >= 15
    assert turn.max() < 25.0  # no larger than needed (the goals came from turns of ~6 degrees)
    np.testing.assert_allclose(
        new @ np.swapaxes(new, -1, -2), np.tile(np.eye(3), new.shape[:3] + (1, 1)), atol=1e-10
    )
    # a goal already met leaves the chain as it was
    inside = beyond[:, 0] < 0
    same, turn0 = retarget_math.reach_fingertips(
        rot[inside], base[inside], segs, retarget_math.chain_tips(rot, base, segs)[inside], 1e-3
    )
    np.testing.assert_allclose(same, rot[inside], atol=1e-9)
    assert turn0.max() < 1e-6


def test_reach_fingertips_out_of_reach_stops_at_the_geometric_floor() -> None:
    """A goal 1.2 from the base of a chain 0.9 long (about where the finger points, turned up to
    ~20 degrees): the closest any rotations can come is 0.3, the straightened chain pointing at
    it."""
    rng = np.random.default_rng(4)
    rot, base, segs = _finger(rng, 10)
    direction = retarget_math.chain_tips(rot, base, segs) - base
    direction = (
        convert.axis_angle_to_matrix(rng.normal(0, 0.2, size=(10, 1, 3))) @ direction[..., None]
    )[..., 0]
    goal = base + 1.2 * direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    new, _ = retarget_math.reach_fingertips(rot, base, segs, goal, sigma=1e-3)
    dist = np.linalg.norm(retarget_math.chain_tips(new, base, segs) - goal, axis=-1)
    np.testing.assert_allclose(dist, 1.2 - 0.99 * 0.9, atol=1e-3)


def test_contact_weights() -> None:
    tips = np.zeros((1, 3, 3))
    tips[0, 1] = [0.0, 0.0, 0.0]  # touching the thumb (index 0)
    tips[0, 2] = [0.5, 0.0, 0.0]  # half a hand away
    w = retarget_math.contact_weights(tips, 0, 1.0)
    assert w[0, 0] == 0.0 and w[0, 1] == pytest.approx(1.0) and w[0, 2] < 1e-10
    tips[0, 1] = [retarget_math.CONTACT_RANGE, 0, 0]
    assert retarget_math.contact_weights(tips, 0, 1.0)[0, 1] == pytest.approx(np.exp(-1))


def test_hand_length() -> None:
    assert retarget_math.hand_length(np.zeros(3), np.array([0, 3.0, 4.0]), [1, 2, 3]) == 11.0
