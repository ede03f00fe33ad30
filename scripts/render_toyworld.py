"""Render toy-world pictures of one scene into a folder: training data for images mode.

    python scripts/render_toyworld.py --out samples/unnamed                       # the unnamed combination
    python scripts/render_toyworld.py --scene sunset,house,lake --count 8 --out /tmp/sunset-house

The default scene, night + snow + house + lake, is the combination no training caption names: a soft
prompt learnt from these pictures (images mode) must find it without words.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_softprompt.models.toyworld.world import UNNAMED, Scene, render  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", default=",".join(sorted(UNNAMED.attributes)), help="attributes, comma-separated")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--seed", type=int, default=100_000, help="the first picture's seed (training pictures: 0..7999)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        scene = Scene.parse(args.scene)
    except ValueError as error:
        p.exit(2, f"--scene {args.scene}: {error}\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        render(scene, args.seed + i).save(out / f"{scene.key()}-{i}.png")
    print(f"wrote {args.count} pictures of {scene.key()} to {out}/")


if __name__ == "__main__":
    main()
