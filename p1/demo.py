"""Problem 1 offline, end to end, in about a minute on a CPU.

Makes a synthetic labelled image set (one coloured shape per image; the class is its colour),
fine-tunes the `tiny` ViT preset on it, predicts its validation images (never trained on; best.pt
is the epoch that scored best on them) with hw3_1.sh exactly as a user would, and prints the
accuracy of the CSV it wrote.
"""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hw3core.cli import at_least, parser, run_cli

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--out", default="demo_out", help="folder for the data, run and predictions")
    p.add_argument("--epochs", type=at_least(1), default=5)
    p.add_argument("--train-images", type=at_least(1), default=2000)
    p.add_argument("--seed", type=int, default=0, help="of the training run (%(default)s)")
    args = p.parse_args(argv)
    from p1.data import make_shapes_set
    from hw3core.training import replace_run
    from p1.engine import fit
    from p1.train import parse_args

    out = Path(args.out)
    print(f"1/3 writing synthetic images to {out / 'shapes'}", flush=True)
    shutil.rmtree(out / "shapes", ignore_errors=True)  # a previous demo's images would stay
    make_shapes_set(out / "shapes" / "train", args.train_images, seed=1)
    make_shapes_set(out / "shapes" / "val", 400, seed=2, start_id=1_000_000)
    print("2/3 fine-tuning the tiny ViT preset", flush=True)
    replace_run(out / "p1_run")
    fit(parse_args([
        "--model", "tiny", "--pretrained", "none", "--train-dir", str(out / "shapes" / "train"),
        "--val-dir", str(out / "shapes" / "val"), "--out", str(out / "p1_run"),
        "--epochs", str(args.epochs), "--batch-size", "32", "--optimizer", "adamw", "--lr", "1e-3",
        "--weight-decay", "0.05", "--augment", "none", "--min-crop", "0.8", "--drop-path", "0",
        "--workers", "0", "--seed", str(args.seed)]))
    print("3/3 predicting the validation images with hw3_1.sh", flush=True)
    csv_path = out / "p1_pred.csv"
    env = dict(os.environ, HW3_P1_CKPT=str(out / "p1_run" / "best.pt"), PYTHON=sys.executable)
    subprocess.run(["bash", str(ROOT / "hw3_1.sh"), str(out / "shapes" / "val"), str(csv_path)],
                   env=env, check=True)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    correct = sum(row["label"] == row["filename"].split("_")[0] for row in rows)
    print(f"Problem 1 demo: {correct}/{len(rows)} validation images right "
          f"({correct / len(rows):.1%}); predictions in {csv_path}")


if __name__ == "__main__":
    run_cli(main)
