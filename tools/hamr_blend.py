"""`hamr blend IMAGE --out SCENE.blend [--render OUT.png]`: the headless Blender import.

A thin entry script over `hamr_blender.blender.headless.main` (run it with the Python that has bpy):

    python tools/hamr_blend.py IMAGE --out SCENE.blend [--render OUT.png] [--backend-url URL]
        [--checkpoint PATH] [--device cpu|cuda] [--side auto|right|left] [--box X0,Y0,X1,Y1]
        [--focal PX] [--samples N] [--no-shape-keys] [--correctives AUTO|ON|OFF]

Exit codes: 0 done, 2 a user error (message on stderr as `hamr blend: error: ...`).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hamr_blender.blender.headless import main

    sys.exit(main())
