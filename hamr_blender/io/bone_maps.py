"""Bone maps: which bone of an armature plays which MANO joint, per side (bpy-free).

A bone map names, for each side ("left" / "right"), the bone of an armature for each of the 16
MANO joints (`JOINTS`: the wrist and three bones per digit, MANO's names), plus optionally a
``wrist_control``: the bone to rotate when the wrist's orientation is transferred, where the rig
rotates its hand through a control that is not the deforming hand bone (Rigify's ``hand_fk``).
Every joint bone goes from its joint to the next one (the thumb's first bone is the metacarpal,
from the carpometacarpal joint), as in MANO, Rigify and Mixamo; the wrist bone's head is the
wrist.

Built-in maps (`BUILTIN_MAPS`): this extension's own rig (MANO names with .L/.R, one armature
per hand),
the Rigify human metarig, the generated Rigify rig's FK finger controls, and Mixamo's names
(``mixamorig:LeftHandIndex1``...; any ``<prefix>:`` is accepted, as Mixamo downloads differ).
`detect_map` picks the first built-in map whose bones the armature has; `validate_map` reports
the missing bones of a map (never guessed); presets are JSON (`map_to_json` / `map_from_json`,
schema ``hamr.bone_map/1``).

Pure Python (no bpy, numpy not needed): importable and testable anywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SCHEMA = "hamr.bone_map/1"
SIDES = ("left", "right")
DIGITS = ("thumb", "index", "middle", "ring", "pinky")
# The 16 MANO joints, MANO order (hamr_blender's rig names its bones so, with .L/.R).
JOINTS: tuple[str, ...] = (
    "wrist",
    "index1", "index2", "index3",
    "middle1", "middle2", "middle3",
    "pinky1", "pinky2", "pinky3",
    "ring1", "ring2", "ring3",
    "thumb1", "thumb2", "thumb3",
)  # fmt: skip
FINGER_JOINTS = JOINTS[1:]
# The joints whose heads give the hand's frame (`retarget_math.hand_frame`).
FRAME_JOINTS = ("wrist", "index1", "middle1", "pinky1")
WRIST_CONTROL = "wrist_control"  # optional key: the bone that turns the hand
# Custom property on a retargeted armature and its baked actions (JSON: sources, map); the
# export looks for it.
RETARGET_PROP = "hamr_retarget"


class BoneMapError(ValueError):
    """A bone map is malformed or does not fit an armature (the message is for the user)."""


@dataclass(frozen=True)
class BoneMap:
    """A named map: side -> {joint or "wrist_control": bone name}.

    A side may be absent (a one-handed rig); a side's entries must cover `JOINTS`."""

    name: str
    sides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def bones(self, side: str) -> dict[str, str]:
        """{joint: bone} of one side (without the wrist control), {} when the side is absent."""
        entries = self.sides.get(side, {})
        return {j: entries[j] for j in JOINTS if j in entries}

    def wrist_control(self, side: str) -> str | None:
        """The bone that turns the hand (the wrist bone itself when the map names none)."""
        entries = self.sides.get(side, {})
        return entries.get(WRIST_CONTROL) or entries.get("wrist")


# ------------------------------------------------------------------------------ built-in maps
def _rigify(prefix_fingers: str, hand: str, control: str | None) -> dict[str, dict[str, str]]:
    """Rigify's names: f_index.01.L ... thumb.03.R; `prefix_fingers` before each finger bone."""
    out: dict[str, dict[str, str]] = {}
    for side, s in (("left", "L"), ("right", "R")):
        entries = {"wrist": hand.format(s=s)}
        for digit in DIGITS:
            base = "thumb" if digit == "thumb" else f"f_{digit}"
            for k in (1, 2, 3):
                entries[f"{digit}{k}"] = f"{prefix_fingers}{base}.{k:02d}.{s}"
        if control is not None:
            entries[WRIST_CONTROL] = control.format(s=s)
        out[side] = entries
    return out


def _mixamo(prefix: str) -> dict[str, dict[str, str]]:
    """Mixamo's names: <prefix>LeftHand, <prefix>LeftHandIndex1 (MCP) ... Index3; Thumb1 is the
    thumb's metacarpal. (Index4 etc. are the tips' end bones, not joints.)"""
    out: dict[str, dict[str, str]] = {}
    for side, word in (("left", "Left"), ("right", "Right")):
        entries = {"wrist": f"{prefix}{word}Hand"}
        for digit in DIGITS:
            for k in (1, 2, 3):
                entries[f"{digit}{k}"] = f"{prefix}{word}Hand{digit.capitalize()}{k}"
        out[side] = entries
    return out


HAMR_SIDE_SUFFIX = {"left": "L", "right": "R"}


def hamr_bone_name(joint: str, side: str) -> str:
    """This extension's bone for a MANO joint (or fingertip, e.g. "index4") of one side: the MANO
    name with Blender's side suffix, "index1.R", "thumb4.L" (so X-mirror and flipped pose paste
    pair the two hands' bones)."""
    return f"{joint}.{HAMR_SIDE_SUFFIX[side]}"


def hamr_map() -> BoneMap:
    """This extension's rig: one armature per hand, bones named as the MANO joints with the
    side's suffix (`hamr_bone_name`: "index1.R", "index1.L")."""
    return BoneMap("HAMR", {side: {j: hamr_bone_name(j, side) for j in JOINTS} for side in SIDES})


def mixamo_map(prefix: str = "mixamorig:") -> BoneMap:
    return BoneMap("Mixamo", _mixamo(prefix))


BUILTIN_MAPS: dict[str, BoneMap] = {
    "HAMR": hamr_map(),
    # the generated rig: FK finger controls; the hand frame from the deforming hand bone, the
    # wrist turned through the FK hand control (Rigify's arm must be in FK for that)
    "RIGIFY": BoneMap("Rigify (generated rig)", _rigify("", "DEF-hand.{s}", "hand_fk.{s}")),
    "RIGIFY_METARIG": BoneMap("Rigify metarig", _rigify("", "hand.{s}", None)),
    "MIXAMO": mixamo_map(),
}

_MIXAMO_HAND = re.compile(r"^(.*?)(Left|Right)HandIndex1$")


# ------------------------------------------------------------------------------ checks
def missing_bones(bone_map: BoneMap, side: str, bone_names: Iterable[str]) -> list[str]:
    """Joint entries of `side` whose bone the armature lacks, as 'joint -> bone' strings (a joint
    the map does not name at all reads 'joint -> (unmapped)')."""
    names = set(bone_names)
    entries = bone_map.sides.get(side, {})
    out = []
    for j in JOINTS:
        bone = entries.get(j)
        if not bone:
            out.append(f"{j} -> (unmapped)")
        elif bone not in names:
            out.append(f"{j} -> {bone}")
    control = entries.get(WRIST_CONTROL)
    if control and control not in names:
        out.append(f"{WRIST_CONTROL} -> {control}")
    return out


def validate_map(bone_map: BoneMap, side: str, bone_names: Iterable[str]) -> None:
    """Raise BoneMapError listing every missing bone of `side` (nothing is guessed)."""
    if side not in SIDES:
        raise BoneMapError(f"side must be one of {SIDES}, got {side!r}")
    if side not in bone_map.sides:
        raise BoneMapError(f"the bone map {bone_map.name!r} has no {side} hand")
    missing = missing_bones(bone_map, side, bone_names)
    if missing:
        shown = ", ".join(missing[:8]) + (
            f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        )
        raise BoneMapError(
            f"the armature lacks {len(missing)} bone(s) of the {side} hand in the map "
            f"{bone_map.name!r}: {shown}"
        )
    bones = list(bone_map.bones(side).values())
    dupes = sorted({b for b in bones if bones.count(b) > 1})
    if dupes:
        raise BoneMapError(f"the map {bone_map.name!r} uses a bone for two joints: {dupes}")


def fitting_sides(bone_map: BoneMap, bone_names: Iterable[str]) -> list[str]:
    """The sides of `bone_map` whose bones the armature all has."""
    names = set(bone_names)
    return [s for s in SIDES if s in bone_map.sides and not missing_bones(bone_map, s, names)]


def detect_map(bone_names: Iterable[str]) -> tuple[str, BoneMap] | None:
    """(key, map) of the first built-in map with at least one complete side on this armature
    (Mixamo with whatever prefix the armature uses), else None."""
    names = set(bone_names)
    for key, bone_map in BUILTIN_MAPS.items():
        if key == "MIXAMO":
            prefixes = {m.group(1) for n in names if (m := _MIXAMO_HAND.match(n))}
            for prefix in sorted(prefixes):
                candidate = mixamo_map(prefix)
                if fitting_sides(candidate, names):
                    return key, candidate
            continue
        if fitting_sides(bone_map, names):
            return key, bone_map
    return None


# ------------------------------------------------------------------------------ presets
def map_to_json(bone_map: BoneMap) -> str:
    """The map as a JSON preset (``hamr.bone_map/1``)."""
    doc = {
        "schema": SCHEMA,
        "name": bone_map.name,
        "sides": {s: dict(bone_map.sides[s]) for s in SIDES if s in bone_map.sides},
    }
    return json.dumps(doc, indent=2, sort_keys=False)


def map_from_json(text: str) -> BoneMap:
    """Parse a JSON preset; BoneMapError on anything but a well-formed ``hamr.bone_map/1``.

    Unknown joint names are refused (a typo would otherwise silently drop a bone)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BoneMapError(f"the bone map preset is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise BoneMapError(f"not a bone map preset (expected schema {SCHEMA!r})")
    sides = doc.get("sides")
    if not isinstance(sides, dict) or not sides:
        raise BoneMapError("the bone map preset names no side")
    out: dict[str, dict[str, str]] = {}
    allowed = set(JOINTS) | {WRIST_CONTROL}
    for side, entries in sides.items():
        if side not in SIDES:
            raise BoneMapError(f"unknown side {side!r} in the bone map (use left / right)")
        if not isinstance(entries, dict):
            raise BoneMapError(f"the {side} side of the bone map must be an object")
        unknown = sorted(set(entries) - allowed)
        if unknown:
            raise BoneMapError(f"unknown joint name(s) in the {side} map: {unknown}")
        if not all(isinstance(v, str) for v in entries.values()):
            raise BoneMapError(f"every bone of the {side} map must be a name (a string)")
        out[side] = {k: v for k, v in entries.items() if v}
    name = doc.get("name") or "Custom"
    return BoneMap(str(name), out)
