"""Render toy-world pictures of one scene into a folder: training data for images mode.

    python scripts/render_toyworld.py --out samples/unnamed                       # the unnamed combination
    python scripts/render_toyworld.py --scene sunset,house,lake --count 8 --out /tmp/sunset-house
    python scripts/render_toyworld.py --scene noon,house,lake,trees --styles --out samples/toyworld-styles.png

The default scene, night + snow + house + lake, is the combination no training caption names: a soft
prompt learnt from these pictures (images mode) must find it without words.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_softprompt.models.toyworld.world import LIGHTS, MEDIUMS, UNNAMED, Scene, render  # noqa: E402


def style_sheet(scene: Scene, seed: int, out: Path, scale: int = 2) -> None:
    """The scene in every medium (rows: photo, painting, sketch) and light (columns: clear, golden, misty)."""
    from PIL import Image

    size = 64 * scale
    sheet = Image.new("RGB", (size * len(LIGHTS), size * len(MEDIUMS)))
    for row, medium in enumerate(MEDIUMS):
        for column, light in enumerate(LIGHTS):
            picture = render(Scene(scene.time, scene.flags, medium, light), seed).resize((size, size), Image.NEAREST)
            sheet.paste(picture, (column * size, row * size))
    sheet.save(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", default=",".join(sorted(UNNAMED.attributes)), help="attributes, comma-separated")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--seed", type=int, default=100_000, help="the first picture's seed (training pictures: 0..7999)")
    p.add_argument(
        "--styles", action="store_true", help="one sheet of the scene in every medium and light (--out: a PNG)"
    )
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        scene = Scene.parse(args.scene)
    except ValueError as error:
        p.exit(2, f"--scene {args.scene}: {error}\n")
    out = Path(args.out)
    if args.styles:
        style_sheet(scene, args.seed, out)
        print(f"wrote {scene.key()} in {len(MEDIUMS)} media x {len(LIGHTS)} lights to {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        render(scene, args.seed + i).save(out / f"{scene.key()}-{i}.png")
    print(f"wrote {args.count} pictures of {scene.key()} to {out}/")


if __name__ == "__main__":
    main()
