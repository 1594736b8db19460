"""Whole jobs, timed as a user meets them: from the command to the last file it writes.

    python -m bench.jobs --device cuda                          # what bench/gpu.sh runs
    python -m bench.jobs --device cpu --scale 0.01 --model tiny --image-size 64   # a smoke run

1. A 10-epoch fine-tune with p1/train.py's defaults (ViT-B/16 at 384, validation every epoch)
   on a pets-shaped set: 3,680 training and 1,500 validation JPEGs of about 500 x 375 in 37
   classes, generated. The model starts from random weights saved as a timm state dict and
   passed with --pretrained, as the downloaded weights are.
2. bash hw3_1.sh on 2,200 such JPEGs with that run's best.pt.
3. bash hw3_2.sh on 100 JPEGs of 640 x 480 with a full-size CATR of random weights whose [SEP]
   logit is raised until its greedy captions are as long as COCO's on average (12 word pieces),
   so that the folder's figures have about a realistic number of panels in all.
4. The fine-tune's training loader on its own (no model), to set against the training's images/s:
   as the run built it, and with every core but one augmenting images decoded once into RAM
   (--image-cache ram) or decoding and augmenting them every epoch (off).

--scale shrinks every image count. Prints tables and writes bench/results/jobs_<device>.json,
also after each job, so that a run cut short keeps the jobs it finished (the loaders come last).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.measure import write_result
from bench.tables import jobs as jobs_table
from bench.tables import jobs_loaders as jobs_loaders_table
from hw3core.checkpoints import save_checkpoint
from hw3core.cli import parser, run_cli
from hw3core.runtime import Distributed, autocast, pick_device, share_cores, usable_cores
from hw3core.training import replace_run
from p1.data import discover
from p1.engine import build_loaders
from p1.model import DEFAULT_MEAN, DEFAULT_STD, make_arch
from p1.model import build_model as build_vit
from p1.train import parse_args as parse_train_args
from p2.data import preprocess
from p2.decode import cuda_graphs, encode_images, greedy_search_static
from p2.model import build_model as build_catr
from p2.model import save_captioner
from p2.tokenizer import END_ID
import p2.visualize as p2_visualize

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# the targets, in seconds from the command to the last file
TARGETS = {"fine_tune": 90, "hw3_1": 20, "hw3_2": 30}
COCO_CAPTION_PIECES = 12
# hw3_2.sh's caption limit: the captioner is tuned at the length the job decodes to
HW3_2_MAX_LEN = p2_visualize.parse_args(["--images", ".", "--out", "."]).max_len


def _photo_like(args):
    """One JPEG of ``size``: smooth colour fields with a class-dependent tint and fine noise, so
    that it compresses and decodes about as a photo does (a few tens of KB)."""
    path, size, label, seed = args
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[1] // 25 + 1, size[0] // 25 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.BICUBIC)
    tint = np.array([(label * 37) % 256, (label * 71) % 256, (label * 113) % 256])
    pixels = 0.7 * np.asarray(image, dtype=np.float32) + 0.3 * tint
    pixels += rng.normal(0, 6, pixels.shape)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_jpegs(folder, count, classes, seed, size=(500, 375)):
    """``count`` JPEGs named {label}_{id}.jpg (the course layout), sizes varying around ``size``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(count):
        width, height = (int(s * rng.uniform(0.8, 1.2)) for s in size)
        label = i % classes
        jobs.append((folder / f"{label}_{seed * 100_000 + i}.jpg", (width, height), label,
                     seed * 100_000 + i))
    with Pool(usable_cores()) as pool:
        pool.map(_photo_like, jobs, chunksize=16)


def timed_command(command, env=None):
    """Wall-clock seconds of ``command`` (a list), which must succeed."""
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, **(env or {})},
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def loader_images_per_s(train_argv, device):
    """Images/s of one epoch of p1/train.py's training loader alone, as that run builds it."""
    args = parse_train_args(train_argv)
    samples, classes = discover(args.train_dir)
    size = make_arch(args.model, len(classes), args.image_size)["image_size"]
    preprocess_p1 = {"image_size": list(size), "mean": list(DEFAULT_MEAN),
                     "std": list(DEFAULT_STD)}
    workers = share_cores(args.workers, device)
    start = time.perf_counter()
    loader, _ = build_loaders(args, preprocess_p1, samples, [], workers, device, Distributed())
    built = time.perf_counter() - start  # with the image cache: the one decoding of every file
    start = time.perf_counter()
    images = 0
    for inputs, _ in loader.epoch(0):
        images += len(inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    loader.close()
    return images / seconds, built


def typical_captioner(device, photos):
    """A full-size CATR of random weights whose [SEP] bias makes its greedy captions of
    ``photos`` as long as COCO's on average; returns (model, {the captions' mean, median and
    longest length in word pieces, the bias}). A random decoder changes little from step to
    step, so a caption tends to end at once or to run to the limit: the bias is bisected on the
    mean length, which sets the work of decoding and drawing a folder, and the spread is kept.
    The bias changes the head alone, so the photos are encoded once."""
    torch.manual_seed(0)
    model = build_catr().to(device)
    graphs = cuda_graphs(model) if device.type == "cuda" else None  # the head changes in place
    head = model.mlp.layers[-1].bias
    original = head[END_ID].item()
    with torch.inference_mode(), autocast(device):
        encoded = encode_images(model, [preprocess(photo, model.config["input_size"]).to(device)
                                        for photo in photos])

    def lengths(bias):
        with torch.no_grad():
            head[END_ID] = original + bias
        with torch.inference_mode(), autocast(device):
            tokens, _ = greedy_search_static(model, encoded, HW3_2_MAX_LEN, graphs=graphs)
        return [len(ids) - 2 for ids in tokens]

    # the images' captions flip from long to ended within a narrow band of biases: bisect
    # finely enough to land inside it
    low, high = 0.0, 64.0
    for _ in range(24):
        middle = (low + high) / 2
        if statistics.mean(lengths(middle)) > COCO_CAPTION_PIECES:
            low = middle
        else:
            high = middle
    found = lengths(high)
    return model, {"mean": statistics.mean(found), "median": statistics.median(found),
                   "longest": max(found), "end_bias": high}


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--device", default="auto")
    p.add_argument("--scale", type=float, default=1.0, help="of every image count")
    p.add_argument("--model", default="B_16_imagenet1k", help="p1/train.py --model")
    p.add_argument("--image-size", type=int, help="p1/train.py --image-size (the model's)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--work", type=Path, help="folder for the data and runs (default: temporary)")
    p.add_argument("--out", type=Path, help="the JSON (default: bench/results/jobs_<device>.json)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    out = args.out or RESULTS / f"jobs_{device.type}.json"
    what = "whole jobs from the command to the last file: a fine-tune, hw3_1.sh, hw3_2.sh"
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        results, train_argv = run_jobs(
            args, device, work,
            lambda so_far: write_result(out, what, device=device, quiet=True, **so_far))
        # the jobs' table first: they hold the targets, and a run cut short keeps it
        print("\n".join(jobs_table(results)))
        pieces = results["jobs"]["hw3_2"].get("caption_pieces")
        if pieces:
            print(f"\nhw3_2.sh's captioner: captions of {pieces['mean']:.1f} word pieces on "
                  f"average (median {pieces['median']}, longest {pieces['longest']})\n", flush=True)
        results.update(time_loaders(train_argv, device))
    print("\n".join(jobs_loaders_table(results)))
    write_result(out, what, device=device, **results)
    failed = [name for name, job in results["jobs"].items() if "error" in job]
    return 1 if failed or results["loader_errors"] else 0


def attempt(job, name):
    """job(), or {"error": what it raised}, said on stderr: a job that fails (a GPU's first
    run) leaves the others to be measured."""
    try:
        return job()
    except Exception as error:
        print(f"bench.jobs: {name} failed: {type(error).__name__}: {error}", file=sys.stderr,
              flush=True)
        return {"error": f"{type(error).__name__}: {error}"}


def run_jobs(args, device, work, save):
    """The data, then each job; ``save(results)`` after each with what is known so far, which a
    time limit that cuts the run short (bench/gpu.sh's) leaves in place. Returns the results and
    the fine-tune's arguments."""
    def count(n):
        return max(2, round(n * args.scale))

    started = time.perf_counter()
    make_jpegs(work / "pets" / "train", count(3680), 37, seed=1)
    make_jpegs(work / "pets" / "val", count(1500), 37, seed=2)
    make_jpegs(work / "pets" / "test", count(2200), 37, seed=3)
    make_jpegs(work / "photos", count(100), 1, seed=4, size=(640, 480))
    jobs = {}
    results = {"scale": args.scale, "model": args.model,
               "data_seconds": time.perf_counter() - started, "jobs": jobs, "targets_s": TARGETS}

    torch.manual_seed(0)
    size = [args.image_size] if args.image_size else None
    weights = build_vit(make_arch(args.model, 1000, size)).state_dict()
    save_checkpoint(weights, work / "vit_random.pth")
    train_argv = ["--train-dir", str(work / "pets" / "train"), "--val-dir",
                  str(work / "pets" / "val"), "--out", str(work / "run"), "--model", args.model,
                  "--pretrained", str(work / "vit_random.pth"), "--epochs", str(args.epochs),
                  "--device", device.type,
                  *(["--image-size", str(args.image_size)] if args.image_size else [])]
    python = {"PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}

    def fine_tune():
        replace_run(work / "run")  # a --work folder's earlier run: not timed, nor reported
        try:
            seconds = timed_command([sys.executable, "p1/train.py", *train_argv], python)
        finally:  # the epochs of a run that failed later still tell its rate
            metrics = work / "run" / "metrics.jsonl"
            history = ([json.loads(line) for line in metrics.read_text().splitlines()]
                       if metrics.exists() else [])
            if history:
                results.update(train_images_per_s_by_epoch=[h["images_per_s"] for h in history],
                               epoch_seconds=[h["epoch_seconds"] for h in history],
                               val_seconds=[h.get("val_seconds") for h in history],
                               best_val_acc=max(h["val_acc"] for h in history))
        return {"seconds": seconds, "images": count(3680), "epochs": args.epochs}

    def hw3_1():  # with the fine-tune's best.pt, even from a run that failed later
        seconds = timed_command(
            ["bash", "hw3_1.sh", str(work / "pets" / "test"), str(work / "pred.csv")],
            {**python, "HW3_P1_CKPT": str(work / "run" / "best.pt")})
        return {"seconds": seconds, "images": count(2200)}

    def hw3_2():
        photos = [Image.open(path).convert("RGB")
                  for path in sorted((work / "photos").glob("*"))[:16]]
        captioner, caption_pieces = typical_captioner(device, photos)
        save_captioner(captioner.cpu(), work / "catr_random.pth")
        seconds = timed_command(["bash", "hw3_2.sh", str(work / "photos"), str(work / "figures")],
                                {**python, "HW3_P2_CKPT": str(work / "catr_random.pth")})
        return {"seconds": seconds, "images": count(100),
                "figures": len(list((work / "figures").glob("*.png"))),
                "caption_pieces": caption_pieces}

    for name, job in [("fine_tune", fine_tune), ("hw3_1", hw3_1), ("hw3_2", hw3_2)]:
        jobs[name] = attempt(job, name)
        save(results)
    return results, train_argv


def time_loaders(train_argv, device):
    """Images/s of the fine-tune's training loader alone, as the run built it, and of the other
    ways to feed its steps: every core but one augmenting the images decoded once into RAM, or
    decoding and augmenting them every epoch. A loader that fails is named in loader_errors."""
    cpu_workers = max(1, usable_cores() - 1)
    errors = {}

    def rate(name, argv):
        timed = attempt(lambda: loader_images_per_s(argv, device), f"the loader {name}")
        if isinstance(timed, dict):
            errors[name] = timed["error"]
            return None, None
        return timed

    loader_rate, loader_build = rate("as built", train_argv)
    in_workers = {cache: rate(cache, [*train_argv, "--image-cache", cache, "--workers",
                                      str(cpu_workers)])[0] for cache in ("ram", "off")}
    return {"loader_images_per_s": loader_rate, "loader_build_s": loader_build,
            "loader_cpu_workers": cpu_workers,
            "loader_ram_workers_images_per_s": in_workers["ram"],
            "loader_cpu_workers_images_per_s": in_workers["off"], "loader_errors": errors}


if __name__ == "__main__":
    sys.exit(run_cli(main))
