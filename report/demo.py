"""The report of the offline demo: the comparison runs on the demo's synthetic shapes, then
report/build.py on them and on the demo's own runs (this is how the committed report.pdf is made).

    bash demo.sh demo_out && python report/demo.py --demo demo_out --out report.pdf

The comparisons start from a `tiny` ViT pre-trained on another task on the same kind of images
(whether the shape's colour is warm or cool, not which colour it is), so that training the head
alone has learnt features to keep: the whole network against the head only, SGD against AdamW,
and the recipe of the submission this project grew from (SGD at 0.02, a constant rate, no crop,
no flip, no smoothing) against the default. Each run is skipped when its folder already holds a
finished run.
"""
import json
from pathlib import Path

from hw3core.cli import at_least, parser, run_cli
from hw3core.errors import UserError


# Shared by every comparison run: the demo's tiny preset and images, RandAugment off (its colour
# operations would change the class of a colour-labelled image)
COMMON = ["--model", "tiny", "--batch-size", "32", "--augment", "none", "--workers", "0"]
COMPARISONS = {
    "full_sgd": ["--optimizer", "sgd", "--lr", "0.01"],
    "head_only_sgd": ["--optimizer", "sgd", "--lr", "0.01", "--freeze-backbone"],
    "full_adamw": ["--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.05"],
    "seed_recipe_sgd": ["--optimizer", "sgd", "--lr", "0.02", "--weight-decay", "0",
                        "--warmup-epochs", "0", "--schedule", "constant", "--no-crop",
                        "--no-flip", "--label-smoothing", "0", "--drop-path", "0",
                        "--clip-grad", "0"],
}


def finished(run, epochs):
    metrics = run / "metrics.jsonl"
    return metrics.is_file() and len(metrics.read_text().splitlines()) >= epochs


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--demo", default="demo_out", help="the folder bash demo.sh wrote")
    p.add_argument("--out", default="report.pdf")
    p.add_argument("--epochs", type=at_least(1), default=3, help="of each comparison run")
    args = p.parse_args(argv)
    from p1.data import make_shapes_set
    from hw3core.training import replace_run
    from p1.engine import fit
    from p1.train import parse_args
    from report import build

    demo = Path(args.demo)
    shapes = demo / "shapes"
    if not finished(demo / "p1_run", 1) or not (demo / "p2_run" / "best.pt").is_file():
        raise UserError(f"no demo runs in {demo}: run bash demo.sh {demo} first")
    runs = demo / "report_runs"
    pretext = runs / "pretext_warmth"
    if not finished(pretext, 3):
        print("pre-training on warm against cool colours (the pretext task)", flush=True)
        replace_run(pretext)
        make_shapes_set(runs / "warmth_labels" / "train", 2000, seed=11, label_by="warmth")
        make_shapes_set(runs / "warmth_labels" / "val", 400, seed=12, start_id=1_000_000,
                        label_by="warmth")
        fit(parse_args([*COMMON, "--pretrained", "none", "--train-dir",
                        str(runs / "warmth_labels" / "train"), "--val-dir",
                        str(runs / "warmth_labels" / "val"), "--out", str(pretext),
                        "--epochs", "3", "--optimizer", "adamw", "--lr", "1e-3",
                        "--weight-decay", "0.05", "--min-crop", "0.8", "--drop-path", "0"]))
    for name, options in COMPARISONS.items():
        if finished(runs / name, args.epochs):
            continue
        print(f"comparison run {name}", flush=True)
        replace_run(runs / name)  # one of fewer epochs, or stopped
        fit(parse_args([*COMMON, "--pretrained", str(pretext / "best.pt"), "--train-dir",
                        str(shapes / "train"), "--val-dir", str(shapes / "val"),
                        "--out", str(runs / name), "--epochs", str(args.epochs), *options]))
    # one validation image of each of the first three classes
    examples = [min((shapes / "val").glob(f"{label}_*.png")) for label in range(3)]
    scenes = demo / "scenes" / "heldout" / "images"
    build.main([
        "--out", args.out, "--data-note",
        "Built from the offline demo (bash demo.sh, then python report/demo.py): synthetic "
        "images, not the course's data, so no number here says anything about the pets or "
        "COCO. Problem 1: 64 x 64 images of one coloured shape, the class being its colour "
        "(4 classes); the comparison runs start from a tiny ViT pre-trained to tell warm "
        "colours from cool ones (2 classes). Problem 2: the small captioner trained from "
        "scratch on synthetic scenes. Rebuild it from your own runs with report/build.py "
        "(README, 'The report').",
        "--p1-runs", str(demo / "p1_run"), *[str(runs / name) for name in COMPARISONS],
        str(pretext), "--p1-images", *map(str, examples),
        "--p2-checkpoint", str(demo / "p2_run" / "best.pt"), "--p2-images", str(scenes),
        "--p2-max-images", "2"])
    print(json.dumps({"report": args.out}))


if __name__ == "__main__":
    run_cli(main)
