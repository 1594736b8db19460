"""Problem 2 offline, end to end, in a few minutes on a CPU.

Writes synthetic scenes (one to three coloured shapes, captioned left to right), trains the small
captioner on them from scratch, then runs hw3_2.sh on held-out scenes exactly as a user would,
with HW3_P2_CKPT pointing at the new best.pt, and prints a few captions beside the true ones.
The word-map figures are in OUT/p2_figures/.
"""
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from hw3core.cli import at_least, parser, run_cli
from p2 import inference
from p2.configs import SCENE_RECIPE
from p2.metrics import words
from p2.train import parse_args

ROOT = Path(__file__).resolve().parents[1]

# The demo's captioner has no encoder: the decoder reads the backbone's features directly, which
# learns the shapes after about 8,000 to 12,000 training images instead of the 12,000 to 20,000
# of the encoder's recipe (bench/RESULTS.md), at 15% less time per step. bench/p2_attention.py
# keeps the encoder, whose maps localise better.
DEMO_RECIPE = (*SCENE_RECIPE, "--enc-layers", "0")
TRAINING_SIZE = {"cpu": (2000, 8), "cuda": (3000, 10)}  # (scenes, epochs)
ENOUGH_IMAGES = 16_000  # training images (scenes x epochs) that learn the shapes: a CPU's 2,000 x 8


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--out", default="demo_out", help="folder for the data, run and figures")
    p.add_argument("--epochs", type=at_least(1), default=None,
                   help="8 on a CPU, 10 on a GPU")
    p.add_argument("--train-scenes", type=at_least(1), default=None,
                   help="2,000 on a CPU, 3,000 on a GPU")
    p.add_argument("--show", type=at_least(1), default=4,
                   help="held-out scenes captioned by hw3_2.sh")
    p.add_argument("--val-scenes", type=at_least(1), default=30,
                   help="validation scenes, which pick best.pt (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="of the training run (%(default)s)")
    args = p.parse_args(argv)
    # after the arguments' errors: seconds of importing torch
    from hw3core.checkpoints import load_checkpoint
    from hw3core.runtime import pick_device
    from hw3core.training import replace_run
    from p2.data import make_scene_set
    from p2.engine import fit

    scenes_default, epochs_default = TRAINING_SIZE[pick_device().type]
    if args.train_scenes is None:
        args.train_scenes = scenes_default
    if args.epochs is None:
        args.epochs = epochs_default
    out = Path(args.out)
    scenes = out / "scenes"
    print(f"1/3 writing synthetic scenes to {scenes}", flush=True)
    shutil.rmtree(scenes, ignore_errors=True)  # a previous demo's scenes would stay
    make_scene_set(scenes / "train", args.train_scenes, seed=1)
    make_scene_set(scenes / "val", args.val_scenes, seed=2, start_id=args.train_scenes)
    make_scene_set(scenes / "heldout", args.show, seed=3,
                   start_id=args.train_scenes + args.val_scenes)
    print("2/3 training the small captioner from scratch", flush=True)
    run = out / "p2_run"
    replace_run(run)
    fit(parse_args([
        "--train-json", str(scenes / "train" / "captions.json"),
        "--train-dir", str(scenes / "train" / "images"),
        "--val-json", str(scenes / "val" / "captions.json"),
        "--val-dir", str(scenes / "val" / "images"), "--out", str(run), *DEMO_RECIPE,
        "--epochs", str(args.epochs), "--workers", "0", "--seed", str(args.seed)]))
    print("3/3 captioning the held-out scenes with hw3_2.sh", flush=True)
    figures = out / "p2_figures"
    env = dict(os.environ, HW3_P2_CKPT=str(run / "best.pt"), PYTHON=sys.executable)
    subprocess.run(["bash", str(ROOT / "hw3_2.sh"), str(scenes / "heldout" / "images"),
                    str(figures)], env=env, check=True)
    # the same checkpoint through inference.py, for the caption texts to compare
    inference.main(["--images", str(scenes / "heldout" / "images"), "--checkpoint",
                    str(run / "best.pt"), "--out", str(out / "p2_captions.jsonl"),
                    "--max-len", "32"])
    content = json.loads((scenes / "heldout" / "captions.json").read_text())
    truth = {entry["file_name"]: a["caption"] for entry in content["images"]
             for a in content["annotations"] if a["image_id"] == entry["id"]}
    right = 0
    for line in (out / "p2_captions.jsonl").read_text().splitlines():
        item = json.loads(line)
        ok = words(item["caption"]) == words(truth[item["file"]])
        right += ok
        print(f"{item['file']}: {item['caption']!r} (true: {truth[item['file']]!r})"
              + ("" if ok else "  <- wrong"))
    val_exact = load_checkpoint(run / "best.pt")["val"]["val_exact"]
    print(f"Problem 2 demo: {right}/{len(truth)} held-out captions exactly right ({val_exact:.0%} "
          f"of the {args.val_scenes} validation captions); word maps in {figures}/")
    advice = train_longer_advice(val_exact, args)
    if advice:
        print(advice)


def train_longer_advice(val_exact, args):
    """What to run when under half of the validation captions are exactly right (the shapes not
    learnt yet), else None: at least 4 more epochs, and ENOUGH_IMAGES in all."""
    if val_exact >= 0.5:
        return None
    epochs = max(args.epochs + 4, math.ceil(ENOUGH_IMAGES / args.train_scenes))
    command = shlex.join([sys.executable, os.path.relpath(__file__), "--out", str(args.out),
                          "--train-scenes", str(args.train_scenes),
                          "--val-scenes", str(args.val_scenes),
                          "--epochs", str(epochs), "--seed", str(args.seed)])
    return (f"Only {val_exact:.0%} of the validation captions are exactly right: this run "
            f"trained on {args.train_scenes * args.epochs:,} images, and the captioner learns "
            f"the colours first, the shapes after about 8,000 to 12,000. Train longer "
            f"({args.train_scenes * epochs:,} images): {command}")


if __name__ == "__main__":
    run_cli(main)
