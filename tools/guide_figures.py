"""The user guide's panel diagram: `python -m tools.guide_figures [--out docs/images/panels.png]`.

bpy as a module has no window, so Blender's sidebar cannot be screenshotted here. Instead this
registers the extension in headless Blender, calls each panel's own `draw` (and the preferences')
with a stand-in layout that records what it draws, reads every property's label and every
operator's name from Blender's RNA, and draws the result as a diagram: what the user sees, in
the order they see it, taken from the code so it follows every change to the panels.

Also prints the recorded panels as JSON. Imports bpy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """A stand-in for `bpy.types.UILayout` that records rows of (kind, text) items."""

    def __init__(self, rows: list[list[tuple[str, str]]], row: list | None = None) -> None:
        self.rows, self._row = rows, row
        self.enabled = True
        self.use_property_split = False
        self.alignment = "EXPAND"

    def _add(self, kind: str, text: str) -> None:
        if self._row is not None:
            self._row.append((kind, text))
        else:
            self.rows.append([(kind, text)])

    def row(self, **_kw) -> Recorder:
        if self._row is not None:
            return self  # a row inside a row stays on the same line
        new: list[tuple[str, str]] = []
        self.rows.append(new)
        return Recorder(self.rows, new)

    def column(self, **_kw) -> Recorder:
        return Recorder(self.rows)  # its items go on lines of their own

    box = column

    def label(self, text: str = "", **_kw) -> None:
        self._add("label", text)

    def separator(self, **_kw) -> None:
        pass

    def prop(self, data, name: str, text: str | None = None, **kw) -> None:
        rna = data.bl_rna.properties[name]
        label = rna.name if text is None else text
        value = getattr(data, name, None) if not isinstance(data, _Prefs) else None
        if rna.type == "BOOLEAN":
            on = rna.default if value is None else value
            self._add("check_on" if on else "check", label)
        elif rna.type == "ENUM" and kw.get("expand"):
            for item in rna.enum_items:
                self._add("button", item.name)
        elif rna.type == "ENUM":
            key = rna.default if value is None else value
            shown = rna.enum_items[key].name if key else ""
            self._add("field", f"{label}: {shown}" if label else shown)
        else:
            if getattr(rna, "is_array", False):
                shown = ", ".join(
                    f"{v:g}" for v in (value if value is not None else rna.default_array)
                )
            elif rna.type in ("FLOAT", "INT"):
                shown = f"{(rna.default if value is None else value):g}"
            elif rna.type == "STRING":
                shown = rna.default if value is None else value
                shown = "" if rna.subtype == "PASSWORD" else shown
            else:
                shown = ""
            self._add("field", f"{label}: {shown}" if label and shown else label or shown or name)

    def prop_search(self, data, name: str, *_a, text: str | None = None, **_kw) -> None:
        self.prop(data, name, text=text)

    def operator(self, idname: str, text: str | None = None, **_kw):
        import bpy

        group, op = idname.split(".")
        label = text or getattr(getattr(bpy.ops, group), op).get_rna_type().name
        self._add("button", label)

        class _Props:  # the operator's properties the panel sets: ignored
            def __setattr__(self, key, value) -> None:
                pass

        return _Props()


def record_panels() -> list[dict]:
    """[{"title", "rows"}] for the HAMR sidebar panels and the preferences."""
    import bpy

    import hamr_blender
    from hamr_blender.blender import preferences, retarget, ui

    hamr_blender.register()
    context = bpy.context
    panels = []

    class _Self:
        pass

    for cls in (ui.HAMR_PT_main, ui.HAMR_PT_image, ui.HAMR_PT_video, ui.HAMR_PT_hand,
                retarget.HAMR_PT_retarget):  # fmt: skip
        rows: list[list[tuple[str, str]]] = []
        fake = _Self()
        fake.layout = Recorder(rows)
        cls.draw(fake, context)
        title = cls.bl_label if cls.bl_label != "HAMR Hands" else "HAMR Hands (backend)"
        panels.append({"title": title, "rows": rows})
    prefs = preferences.HAMR_Preferences
    rows = []
    fake = _Self()
    fake.layout = Recorder(rows)
    prefs.draw(_Prefs(fake, prefs), context)
    panels.append({"title": "Preferences (HAMR Hands)", "rows": rows})
    return panels


class _Prefs:
    """`self` for AddonPreferences.draw: `layout` records, and `prop(self, name)` reads the
    preferences class's RNA."""

    def __init__(self, fake, cls) -> None:
        self.layout = fake.layout
        self.bl_rna = cls.bl_rna


def draw_diagram(panels: list[dict], out: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 15)
        bold = ImageFont.truetype("DejaVuSans-Bold.ttf", 15)
    except OSError:
        font = bold = ImageFont.load_default()
    width, line, pad, gap = 430, 28, 10, 14
    columns = [panels[:3], panels[3:5], panels[5:]]
    heights = [sum((len(p["rows"]) + 1) * line + pad * 2 + gap for p in col) for col in columns]
    image = Image.new("RGB", (len(columns) * (width + gap) + gap, max(heights) + gap), "#303030")
    draw = ImageDraw.Draw(image)
    for c, col in enumerate(columns):
        x0, y = gap + c * (width + gap), gap
        for panel in col:
            h = (len(panel["rows"]) + 1) * line + pad * 2
            draw.rounded_rectangle((x0, y, x0 + width, y + h), 6, fill="#3d3d3d")
            draw.text((x0 + pad, y + pad), "▾ " + panel["title"], fill="#ffffff", font=bold)
            yy = y + pad + line
            for row in panel["rows"]:
                if not row:
                    continue
                w = (width - 2 * pad - 4 * (len(row) - 1)) / len(row)
                for i, (kind, text) in enumerate(row):
                    xa = x0 + pad + i * (w + 4)
                    box = (xa, yy, xa + w, yy + line - 5)
                    if kind == "button":
                        draw.rounded_rectangle(box, 4, fill="#545454")
                        draw.text(
                            (xa + w / 2, yy + 11), text, fill="#ffffff", font=font, anchor="mm"
                        )
                    elif kind in ("check", "check_on"):
                        fill = "#4772b3" if kind == "check_on" else "#545454"
                        draw.rectangle((xa + 2, yy + 4, xa + 16, yy + 18), fill=fill)
                        if kind == "check_on":
                            draw.line(
                                (xa + 5, yy + 11, xa + 8, yy + 15, xa + 14, yy + 6), "#fff", 2
                            )
                        draw.text((xa + 22, yy + 3), text, fill="#e6e6e6", font=font)
                    elif kind == "field":
                        draw.rounded_rectangle(box, 4, fill="#282828")
                        draw.text((xa + 6, yy + 3), text, fill="#e6e6e6", font=font)
                    else:
                        draw.text((xa, yy + 3), text, fill="#bbbbbb", font=font)
                yy += line
            y += h + gap
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "panels.png"))
    args = ap.parse_args(argv)
    panels = record_panels()
    draw_diagram(panels, Path(args.out))
    print(json.dumps(panels, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
