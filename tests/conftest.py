"""Shared fixtures: small synthetic data, one trained tiny ViT, and how to call the entry points."""
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The seed of every training run whose learned quality a test asserts; bench/sweep_learned.py
# reruns those tests' training over several seeds, thread counts and CPU kernels.
TEST_SEED = int(os.environ.get("HW3_TEST_SEED", "0"))


def _best(key):
    return lambda history: max(record[key] for record in history)


def _over_first(key, epoch):
    return lambda history: history[epoch][key] / history[0][key]


# The learned qualities those tests assert, read from a run's metrics.jsonl records: the run,
# the measure, its bar and whether higher is better. The tests and bench/sweep_learned.py read
# them here; the sweep's runs over seeds, threads and CPU kernels, with these bars, are in
# bench/results/sweep_learned.json (tests/bench/test_sweep_learned.py holds the two together).
LEARNED_BARS = {
    "p1_tiny_best_val_acc": ("p1_tiny", _best("val_acc"), 0.8, True),  # 3.2 x chance (4 classes)
    "p1_tiny_last_over_first_train_loss": ("p1_tiny", _over_first("train_loss", -1), 0.8, False),
    # 5 times chance (10 classes)
    "p1_digits_from_scratch_best_val_acc": ("p1_digits", _best("val_acc"), 0.5, True),
    "p2_second_over_first_train_loss": ("p2", _over_first("train_loss", 1), 0.95, False),
    "p2_second_over_first_val_loss": ("p2", _over_first("val_loss", 1), 0.9, False),
}


def run_history(out):
    """The records of a training run's folder, one per epoch (its metrics.jsonl)."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def learned_measures(run, history):
    """``run``'s measures in LEARNED_BARS, from its records (one per epoch)."""
    return {name: measure(history) for name, (of, measure, _, _) in LEARNED_BARS.items()
            if of == run}


def assert_learned(run, history):
    for name, value in learned_measures(run, history).items():
        bar, higher = LEARNED_BARS[name][2:]
        assert (value >= bar) if higher else (value < bar), \
            f"{name} is {value:.4f}: the bar is {'>=' if higher else '<'} {bar}"


_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
# pytest-xdist (pyproject.toml: -n auto) runs the tests in one process per core, at most four
# (each builds its own session fixtures and holds its own torch: about 6 GB of memory in use at the
# peak with two). Each worker's torch, and the scripts a test starts, compute on that worker's
# share of the cores: on 2 cores, two workers of two threads each took 1.8 times the CPU time
# of one thread each. Set before torch loads; WORKER_THREADS is None in one process, or where
# the user set OMP_NUM_THREADS.
WORKER_THREADS = None
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    WORKER_THREADS = max(1, _CORES // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(WORKER_THREADS)


@pytest.hookimpl(optionalhook=True)  # pytest -p no:xdist runs without it
def pytest_xdist_auto_num_workers(config):
    return min(4, _CORES)


def script_env(**extra):
    """Environment for running the project's entry points in a new process with this
    interpreter (installed into it or not, as venv.sh does)."""
    env = dict(os.environ, PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.update(extra)
    return env


def env_without_torch(folder, **extra):
    """script_env in which importing torch fails: for checks that must answer before it loads
    (``folder``: where the stand-in that refuses goes)."""
    (Path(folder) / "torch").mkdir(parents=True, exist_ok=True)
    (Path(folder) / "torch" / "__init__.py").write_text(
        "raise ImportError('torch imported before the arguments were checked')\n")
    env = script_env(**extra)
    env["PYTHONPATH"] += os.pathsep + str(folder)
    return env


def require_names_kept(folder, names):
    """Skip, saying why, where the file system stores other names than those written (macOS
    normalises Unicode, some mounts fold case): a test of names "exactly as on disk" means nothing
    there."""
    stored = set(os.listdir(folder))
    if not set(names) <= stored:
        pytest.skip(f"this file system changed the names written: {sorted(set(names) - stored)}")


def run_entry_point(main, argv, capsys):
    """An entry script's ``main(argv)`` in this process, as run_cli runs it from the shell:
    (exit status, stdout, stderr). Saves the 3 s of a Python start with torch per call."""
    from hw3core.cli import run_cli

    capsys.readouterr()
    try:
        run_cli(main, [str(a) for a in argv])
        status = 0
    except SystemExit as exit_info:
        status = exit_info.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def save_p1_checkpoint(path, image_size, class_names=("red", "green", "blue", "yellow"),
                       model_name="tiny"):
    """A randomly initialised ViT saved the way p1/train.py saves one; returns the model."""
    import torch

    from hw3core.checkpoints import format_tag
    from p1.model import build_model, make_arch

    arch = make_arch(model_name, len(class_names), image_size)
    torch.manual_seed(0)
    model = build_model(arch)
    torch.save({"format": format_tag("hw3-p1-vit"), "arch": arch,
                "preprocess": {"image_size": list(image_size), "mean": [0.5] * 3,
                               "std": [0.5] * 3},
                "class_names": list(class_names), "model": model.state_dict()}, path)
    return model


@pytest.fixture(scope="session")
def ppvit_file(tmp_path_factory):
    """(a random pytorch-pretrained-vit B_16_imagenet1k in eval mode, its state dict's file).

    Its own init zeroes the head (logits would all be 0); here every weight is drawn, LayerNorm
    gains near 1 as in a trained model, and queries and keys sharper, so that attention maps
    are not near-constants. Built once: three test files compare against it.
    """
    import torch
    from pytorch_pretrained_vit import ViT

    torch.manual_seed(0)
    model = ViT("B_16_imagenet1k", pretrained=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.02)
            if "norm" in name and name.endswith("weight"):
                param.add_(1.0)
            elif ".proj_q." in name or ".proj_k." in name:
                param.mul_(5.0)
    model.eval()  # its attention applies dropout to the stored scores in training mode
    path = tmp_path_factory.mktemp("ppvit") / "B_16_imagenet1k.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """A small course-layout set: (train dir, val dir)."""
    return make_shapes_data(tmp_path_factory.mktemp("shapes"))


def make_shapes_data(root):
    from p1.data import make_shapes_set

    make_shapes_set(root / "train", 600, image_size=32, seed=1)
    make_shapes_set(root / "val", 200, image_size=32, seed=2, start_id=100_000)
    return root / "train", root / "val"


def make_digits_data(root, train=500, val=150):
    """scikit-learn's handwritten digits (8 x 8, 10 classes; real images that a dependency
    ships) in the course layout at 16 x 16 pixels: (train dir, val dir)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    folders = []
    for split, indices in (("train", order[:train]), ("val", order[train:train + val])):
        folder = root / split
        folder.mkdir(parents=True)
        for i in indices:
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels).resize((16, 16), Image.Resampling.NEAREST).save(
                folder / f"{digits.target[i]}_{i}.png")
        folders.append(folder)
    return tuple(folders)


def digits_argv(train_dir, val_dir, out):
    """p1/train.py from random weights with the from-scratch defaults (AdamW, lr, weight decay,
    warm-up); light augmentation and small batches for a set of 500 tiny images."""
    return ["--model", "tiny", "--pretrained", "none", "--image-size", "16", "--train-dir",
            str(train_dir), "--val-dir", str(val_dir), "--out", str(out), "--epochs", "6",
            "--batch-size", "16", "--augment", "none", "--min-crop", "0.8", "--workers", "0",
            "--seed", str(TEST_SEED)]


def tiny_args(train_dir, val_dir, out, *extra):
    """train.py arguments for a fast CPU run of the tiny preset at 32 px."""
    from p1.train import parse_args

    return parse_args(tiny_argv(train_dir, val_dir, out, *extra))


def tiny_argv(train_dir, val_dir, out, *extra):
    return ["--model", "tiny", "--pretrained", "none", "--image-size", "32",
            "--train-dir", str(train_dir), "--val-dir", str(val_dir), "--out", str(out),
            "--epochs", "3", "--batch-size", "32", "--optimizer", "adamw", "--lr", "2e-3",
            "--weight-decay", "0.05", "--augment", "none", "--min-crop", "0.8",
            "--drop-path", "0", "--workers", "0", "--seed", str(TEST_SEED), *map(str, extra)]


@pytest.fixture(scope="session")
def trained_tiny(shapes_data, tmp_path_factory):
    """OUT folder of a finished tiny run on shapes_data."""
    from p1.engine import fit

    out = tmp_path_factory.mktemp("tiny_run")
    fit(tiny_args(*shapes_data, out))
    return out
