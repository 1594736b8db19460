"""How much of an object the default random resized crop keeps (p1/train.py --min-crop).

For each smallest-area fraction (--min-crop) and object size, the share of crops that keep at
least half of the object's area. Crops are drawn as p1.data.train_transform draws them
(torchvision's RandomResizedCrop: area fraction uniform in [min-crop, 1], aspect ratio
log-uniform in [3/4, 4/3]) on a 500 x 375 photo, the size of a typical pet photo; the object is a
box of the given share of the photo, of aspect ratio log-uniform in [1/2, 2], placed uniformly at
random. CPU only, a few seconds.

    python bench/min_crop.py [--out bench/results/min_crop.json]
"""
import math
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import RandomResizedCrop

from bench.measure import write_result
from hw3core.cli import parser, run_cli

WIDTH, HEIGHT = 500, 375
MIN_CROPS = (0.08, 0.25, 0.5, 1.0)
OBJECT_SHARES = (0.05, 0.1, 0.25, 0.5)
SAMPLES = 20_000


def kept_share(min_crop, object_share, rng, samples=SAMPLES):
    """The share of crops that keep at least half of a random object's area."""
    photo = torch.empty(3, HEIGHT, WIDTH)
    kept = 0
    for _ in range(samples):
        top, left, h, w = RandomResizedCrop.get_params(photo, (min_crop, 1.0), (3 / 4, 4 / 3))
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2)))
        area = object_share * WIDTH * HEIGHT
        ow = min(WIDTH, math.sqrt(area * aspect))
        oh = min(HEIGHT, area / ow)
        ox, oy = rng.uniform(0, WIDTH - ow), rng.uniform(0, HEIGHT - oh)
        inside_w = max(0.0, min(ox + ow, left + w) - max(ox, left))
        inside_h = max(0.0, min(oy + oh, top + h) - max(oy, top))
        kept += inside_w * inside_h >= 0.5 * ow * oh
    return kept / samples


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "min_crop.json",
                   help="the JSON it writes (%(default)s)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    table = {f"{c:g}": {f"{s:g}": kept_share(c, s, rng) for s in OBJECT_SHARES} for c in MIN_CROPS}
    print(f"share of crops keeping at least half of the object ({SAMPLES:,} crops each, "
          f"{WIDTH} x {HEIGHT} photo)")
    print("| --min-crop | " + " | ".join(f"object {s:.0%} of the photo" for s in OBJECT_SHARES)
          + " |")
    print("| --- |" + " --- |" * len(OBJECT_SHARES))
    for crop, row in table.items():
        print(f"| {crop} | " + " | ".join(f"{share:.1%}" for share in row.values()) + " |")
    write_result(args.out,
                 "share of RandomResizedCrop crops keeping at least half of a random object box",
                 photo=[WIDTH, HEIGHT], samples=SAMPLES, kept_share=table)


if __name__ == "__main__":
    run_cli(main)
