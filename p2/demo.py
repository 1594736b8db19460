"""Problem 2 offline, end to end, in a few minutes on a CPU.

Writes synthetic scenes (one to three coloured shapes, captioned left to right), trains the small
captioner on them from scratch, then runs hw3_2.sh on held-out scenes exactly as a user would,
with HW3_P2_CKPT pointing at the new best.pt, and prints a few captions beside the true ones.
The word-map figures are in OUT/p2_figures/.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hw3core.errors import at_least, run_cli  # noqa: E402

# Shapes are learnt only after about 12,000 to 20,000 training images, at a point that varies
# from run to run (bench/RESULTS.md). On a CPU the demo stops at 16,000 to stay near five
# minutes; a GPU, about seven times faster even with the demo's one loader worker, affords 30,000.
TRAINING_SIZE = {"cpu": (2000, 8), "cuda": (3000, 10)}  # (scenes, epochs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out", help="folder for the data, run and figures")
    p.add_argument("--epochs", type=at_least(1), default=None,
                   help="8 on a CPU (about 40 s each on 2 cores with 2,000 scenes), 10 on a GPU")
    p.add_argument("--train-scenes", type=at_least(1), default=None, help="2,000 on a CPU, 3,000 on a GPU")
    p.add_argument("--show", type=at_least(1), default=4, help="held-out scenes captioned by hw3_2.sh")
    args = p.parse_args(argv)
    from hw3core.checkpoints import load_checkpoint
    from hw3core.runtime import pick_device
    from p2.data import make_scene_set
    from p2.engine import SCENE_RECIPE, fit
    from p2.metrics import words
    from p2.train import parse_args

    scenes_default, epochs_default = TRAINING_SIZE[pick_device().type]
    if args.train_scenes is None:
        args.train_scenes = scenes_default
    if args.epochs is None:
        args.epochs = epochs_default
    out = Path(args.out)
    scenes = out / "scenes"
    print(f"1/3 writing synthetic scenes to {scenes}", flush=True)
    make_scene_set(scenes / "train", args.train_scenes, seed=1)
    make_scene_set(scenes / "val", 30, seed=2, start_id=args.train_scenes)
    make_scene_set(scenes / "heldout", args.show, seed=3, start_id=args.train_scenes + 30)
    print("2/3 training the small captioner from scratch", flush=True)
    run = out / "p2_run"
    fit(parse_args([
        "--train-json", str(scenes / "train" / "captions.json"),
        "--train-dir", str(scenes / "train" / "images"),
        "--val-json", str(scenes / "val" / "captions.json"),
        "--val-dir", str(scenes / "val" / "images"), "--out", str(run), *SCENE_RECIPE,
        "--epochs", str(args.epochs), "--workers", "1"]))
    print("3/3 captioning the held-out scenes with hw3_2.sh", flush=True)
    figures = out / "p2_figures"
    # hw3_2.sh runs `python3`: make that the interpreter running this demo (a venv's, say)
    env = dict(os.environ, HW3_P2_CKPT=str(run / "best.pt"),
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    subprocess.run(["bash", str(ROOT / "hw3_2.sh"), str(scenes / "heldout" / "images"),
                    str(figures)], env=env, check=True)
    # the same checkpoint through inference.py, for the caption texts to compare
    subprocess.run([sys.executable, str(ROOT / "p2" / "inference.py"), "--images",
                    str(scenes / "heldout" / "images"), "--out", str(out / "p2_captions.jsonl"),
                    "--max-len", "32"], env=env, check=True)
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
    print(f"Problem 2 demo: {right}/{len(truth)} held-out captions exactly right; word maps in "
          f"{figures}/")
    val_exact = load_checkpoint(run / "best.pt")["val"]["val_exact"]
    if val_exact < 0.5:
        command = shlex.join([sys.executable, os.path.relpath(__file__), "--out", str(out),
                              "--train-scenes", str(args.train_scenes),
                              "--epochs", str(args.epochs + 4)])
        print(f"Only {val_exact:.0%} of the validation captions are exactly right: the captioner "
              f"has not yet learnt the shapes (colours come first). Train longer: {command}")


if __name__ == "__main__":
    run_cli(main)
