"""Bad inputs to every entry point: one `error:` line and status 2, or the bad file named on
stderr and skipped while the rest goes on; never a traceback, never a partial output.

The Python entry points run in this process (main(argv)); the shell wrappers' pass-through of
both outcomes is tested in tests/p1/test_hw3_1.py and tests/p2/test_scripts.py. The README's
troubleshooting section lists these cases.
"""
import csv
import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import p1.inference
import p1.train
import p1.visualize
import p2.inference
import p2.train
import p2.decode
import p2.visualize
from hw3core.checkpoints import load_checkpoint
from p1.data import make_shapes_set
from p2.data import make_scene_set
from p2.model import save_captioner
from tests.conftest import run_entry_point, save_p1_checkpoint, tiny_argv
from tests.p2.p2_samples import small_model

# Image.MAX_IMAGE_PIXELS while these tests run: bomb.png is over it, the strips well under
PIXEL_LIMIT = 1_000_000
GOOD = {  # name: a PIL image that must be classified or captioned, not skipped
    "dot.png": Image.new("RGB", (1, 1), "green"),
    "wide strip.png": Image.new("RGB", (3000, 10), "red"),
    "tall strip.jpg": Image.new("RGB", (10, 3000), "blue"),
    "depth16.png": Image.fromarray(np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)),
    "palette.png": Image.new("RGB", (30, 20), "yellow").convert("P"),
    "it's \"quoted\".png": Image.new("RGB", (20, 20), "white"),
    "new\nline.png": Image.new("RGB", (20, 20), "black"),
    "café ☕.jpg": Image.new("RGB", (20, 30), "brown"),
}
BAD = ("fake.jpg", "bomb.png")  # not an image; more pixels than the limit


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    for name, image in GOOD.items():
        image.save(folder / name)
    frames = [Image.new("RGB", (16, 16), color) for color in ("red", "blue")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    (folder / "fake.jpg").write_text("this is a text file\n")
    Image.new("L", (1100, 1000)).save(folder / "bomb.png")
    (folder / "notes.txt").write_text("not an image, and not named\n")
    return folder


GOOD_NAMES = sorted([*GOOD, "animated.gif"])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    save_p1_checkpoint(folder / "p1.pt", (32, 32), class_names=("a", "b"))
    save_captioner(small_model(end_bias=50.0), folder / "p2.pt")
    data = (folder / "p1.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(data[:len(data) // 3])
    (folder / "text.pt").write_text("not a checkpoint\n")
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, folder / "foreign.pt")
    newer = load_checkpoint(folder / "p1.pt")
    newer["format"] = "hw3-p1-vit/2"
    torch.save(newer, folder / "newer_p1.pt")
    newer = load_checkpoint(folder / "p2.pt")
    newer["format"] = "hw3-p2-catr/2"
    torch.save(newer, folder / "newer_p2.pt")
    return folder


@pytest.fixture
def pixel_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PIXEL_LIMIT)


# entry point: (main, argv for (checkpoint, image folder, output), problem, output kind)
PREDICTORS = {
    "p1/inference.py": (p1.inference.main,
                        lambda c, i, o: ["--checkpoint", c, "--images", i, "--out", o / "p.csv"],
                        "p1"),
    "p1/visualize.py": (p1.visualize.main,
                        lambda c, i, o: ["attention", "--checkpoint", c, "--images", i,
                                         "--out", o / "maps", "--save-npy"], "p1"),
    "p2/inference.py": (p2.inference.main,
                        lambda c, i, o: ["--checkpoint", c, "--images", i, "--out", o / "c.jsonl",
                                         "--max-len", "3"], "p2"),
    "p2/visualize.py": (p2.visualize.main,
                        lambda c, i, o: ["--checkpoint", c, "--images", i, "--out", o / "figs",
                                         "--max-len", "3"], "p2"),
}


def outputs(entry, out):
    """The names of the images the output of ``entry`` covers, sorted."""
    if entry == "p1/inference.py":
        rows = list(csv.reader(io.StringIO((out / "p.csv").read_text(), newline="")))
        assert rows[0] == ["filename", "label"]
        return sorted(row[0] for row in rows[1:])
    if entry == "p2/inference.py":
        return sorted(json.loads(line)["file"]
                      for line in (out / "c.jsonl").read_text().splitlines())
    folder = out / ("maps" if entry == "p1/visualize.py" else "figs")
    return sorted(p.stem for p in folder.glob("*.png"))


def one_line_error(status, err, *expected):
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for text in expected:
        assert str(text) in err, err


@pytest.mark.parametrize("entry", PREDICTORS)
def test_odd_images_are_each_handled_and_bad_files_named_and_skipped(entry, odd_images,
                                                                     checkpoints, pixel_limit,
                                                                     tmp_path, capsys):
    main, argv, problem = PREDICTORS[entry]
    status, _, err = run_entry_point(main, argv(checkpoints / f"{problem}.pt", odd_images,
                                                tmp_path), capsys)
    assert status == 0, err
    assert "Traceback" not in err
    for name in BAD:
        assert f"skipping {odd_images / name}" in err
    assert "notes.txt" not in err
    stems = entry.endswith("visualize.py")
    assert outputs(entry, tmp_path) == sorted(Path(n).stem if stems else n for n in GOOD_NAMES)


@pytest.mark.parametrize("entry", PREDICTORS)
@pytest.mark.parametrize("case", ["missing folder", "empty folder", "unreadable folder",
                                  "missing checkpoint", "text checkpoint", "truncated checkpoint",
                                  "foreign checkpoint", "newer format", "other problem's",
                                  "output through a file", "read-only output", "full disk"])
def test_bad_inputs_and_outputs_are_one_line_errors_with_no_output(entry, case, checkpoints,
                                                                   odd_images, tmp_path,
                                                                   monkeypatch, capsys):
    main, argv, problem = PREDICTORS[entry]
    other = {"p1": "p2", "p2": "p1"}[problem]
    checkpoint, images, out = checkpoints / f"{problem}.pt", odd_images, tmp_path / "out"
    expected = []
    if case == "missing folder":
        images = tmp_path / "absent"
        expected = [f"not found: {images}"]
    elif case == "empty folder":
        images = tmp_path / "empty"
        images.mkdir()
        (images / "readme.txt").write_text("no images\n")
        expected = [f"no image files in {images}"]
    elif case == "unreadable folder":  # CI runs as root, where chmod 000 blocks nothing
        real_iterdir = Path.iterdir

        def refused(path):
            if path == odd_images:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_iterdir(path)
        monkeypatch.setattr(Path, "iterdir", refused)
        expected = [f"cannot read {odd_images}: Permission denied"]
    elif case.endswith("checkpoint") or case in ("newer format", "other problem's"):
        checkpoint = checkpoints / {
            "missing checkpoint": "absent.pt", "text checkpoint": "text.pt",
            "truncated checkpoint": "truncated.pt", "foreign checkpoint": "foreign.pt",
            "newer format": f"newer_{problem}.pt", "other problem's": f"{other}.pt"}[case]
        expected = [checkpoint]
        if case == "newer format":
            expected.append("update the project")
        elif case == "other problem's":
            expected.append(f"is a Problem {other[1]} ")
    elif case == "output through a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
        expected = ["cannot write", "is a file"]
    else:
        code = errno.EACCES if case == "read-only output" else errno.ENOSPC

        def refused(*args, **kwargs):
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(tempfile, "mkstemp", refused)
        expected = ["cannot write", os.strerror(code)]
    status, _, err = run_entry_point(main, argv(checkpoint, images, out), capsys)
    one_line_error(status, err, *expected)
    # nothing partial, no temporary file, and no empty folder made for the output
    assert not out.exists()


def test_training_goes_on_past_bad_images_and_refuses_bad_starts(odd_images, checkpoints,
                                                                 pixel_limit, tmp_path, capsys):
    # the course layout wants {label}_{id}: label the odd images (and the bad ones) class 0 or 1
    data = tmp_path / "data"
    make_shapes_set(data, 8, image_size=32, seed=1)
    for path in (data).glob("[23]_*.png"):
        path.unlink()
    for i, path in enumerate(sorted(odd_images.iterdir())):
        (data / f"{i % 2}_{900 + i}{path.suffix}").write_bytes(path.read_bytes())
    argv = tiny_argv(data, data, tmp_path / "run", "--epochs", "1", "--batch-size", "8")
    status, _, err = run_entry_point(p1.train.main, argv, capsys)
    assert status == 0, err
    assert err.count("skipping") >= 2 and "Traceback" not in err  # each pass names them
    assert (tmp_path / "run" / "best.pt").is_file()
    # the same command again would replace the run's checkpoints and records: refused
    kept = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    last = tmp_path / "run" / "last.pt"
    one_line_error(*run_entry_point(p1.train.main, argv, capsys)[::2],
                   f"{tmp_path / 'run'} holds another run ({last}): add --resume {last} to go "
                   "on with it, or give another --out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == kept

    for start, message in (("--resume", "truncated.pt"), ("--resume", "newer_p1.pt"),
                           ("--pretrained", "foreign.pt"), ("--pretrained", "p2.pt")):
        status, _, err = run_entry_point(
            p1.train.main, [*argv[:-2], "--out", tmp_path / "again", start, checkpoints / message],
            capsys)
        one_line_error(status, err, checkpoints / message)
    unreadable = tmp_path / "unreadable"  # labelled, but not one image opens
    unreadable.mkdir()
    for i, name in enumerate(BAD):
        (unreadable / f"{i}_{i}{Path(name).suffix}").write_bytes((odd_images / name).read_bytes())
    for train_dir, val_dir, message in (
            (tmp_path / "absent", data, "not found"),
            (odd_images / "notes.txt", data, "not a folder"),
            (unreadable, data, f"none of the 2 image files in {unreadable} could be read"),
            (data, unreadable, f"none of the 2 image files in {unreadable} could be read")):
        argv_bad = tiny_argv(train_dir, val_dir, tmp_path / "bad", "--epochs", "1")
        one_line_error(*run_entry_point(p1.train.main, argv_bad, capsys)[::2], message)
    assert not (tmp_path / "bad" / "last.pt").exists()


def test_captioner_training_goes_on_past_bad_images_and_refuses_bad_starts(
        odd_images, checkpoints, pixel_limit, tmp_path, capsys):
    make_scene_set(tmp_path / "scenes", 4, seed=1, size=(64, 32))
    images = tmp_path / "scenes" / "images"
    content = json.loads((tmp_path / "scenes" / "captions.json").read_text())
    for i, name in enumerate(["dot.png", "wide strip.png", "fake.jpg", "bomb.png"], 100):
        (images / name).write_bytes((odd_images / name).read_bytes())
        content["images"].append({"id": i, "file_name": name})
        content["annotations"].append({"id": i, "image_id": i, "caption": "a red circle"})
    (tmp_path / "captions.json").write_text(json.dumps(content))
    data = ["--train-json", tmp_path / "captions.json", "--train-dir", images,
            "--val-json", tmp_path / "captions.json", "--val-dir", images,
            "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "4", "--max-len", "8",
            "--workers", "0", "--device", "cpu"]
    architecture = ["--config", "small", "--hidden-dim", "32", "--nheads", "2", "--enc-layers",
                    "1", "--dec-layers", "1", "--dim-feedforward", "32"]
    status, _, err = run_entry_point(p2.train.main, [*data, *architecture], capsys)
    assert status == 0, err
    assert "fake.jpg" in err and "bomb.png" in err and "Traceback" not in err
    history = load_checkpoint(tmp_path / "run" / "last.pt")["history"]
    assert history[0]["val_images"] == 6  # every readable image captioned, the two bad ones not

    data[data.index("--out") + 1] = tmp_path / "again"  # not the finished run's folder
    for start, message in (("--resume", "truncated.pt"), ("--resume", "newer_p2.pt"),
                           ("--init", "foreign.pt"), ("--init", "p1.pt")):
        given = data if start == "--init" else [*data, *architecture]
        status, _, err = run_entry_point(p2.train.main, [*given, start, checkpoints / message],
                                         capsys)
        one_line_error(status, err, checkpoints / message)
    status, _, err = run_entry_point(p2.train.main, [data[0], tmp_path / "absent.json",
                                                     *data[2:], *architecture], capsys)
    one_line_error(status, err, "absent.json")
    # neither weights nor a configuration that learns from random ones: CATR's frozen batch norm
    status, _, err = run_entry_point(p2.train.main, data, capsys)
    one_line_error(status, err, "no weights to start from: give --init checkpoints/catr_v3.pth")
    assert "--backbone-norm batch" in err and not (tmp_path / "again").exists()
    content["images"] = [entry for entry in content["images"]
                         if entry["file_name"] in ("fake.jpg", "bomb.png")]
    kept = {entry["id"] for entry in content["images"]}
    content["annotations"] = [a for a in content["annotations"] if a["image_id"] in kept]
    (tmp_path / "unreadable.json").write_text(json.dumps(content))
    for option in ("--train-json", "--val-json"):
        given = [*data, *architecture]
        given[given.index(option) + 1] = tmp_path / "unreadable.json"
        status, _, err = run_entry_point(p2.train.main, given, capsys)
        one_line_error(status, err, f"none of the 2 image files in {images} could be read")


@pytest.fixture(scope="module")
def three_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("three")
    for name, size in (("a.png", (40, 30)), ("b.png", (30, 50)), ("c.png", (20, 20))):
        Image.new("RGB", size, "purple").save(folder / name)
    return folder


def fail_on_b(error):
    """A stand-in for a save or a model call that raises ``error`` for image b alone."""
    def check(argument):
        if (isinstance(argument, Path) and argument.stem == "b") or (
                isinstance(argument, list) and any(x.shape[1:] == (299, 179) for x in argument)):
            raise error
    return check


@pytest.mark.parametrize("entry, target", [
    ("p1/visualize.py", "p1.visualize.save_figure"),
    ("p2/visualize.py", "hw3core.figures.save_figure"),
    ("p2/inference.py", "p2.decode.caption_images")])
def test_an_error_on_one_image_skips_it_and_the_run_goes_on(entry, target, three_images,
                                                            checkpoints, tmp_path, monkeypatch,
                                                            capsys):
    import importlib

    module, name = target.rsplit(".", 1)
    real = getattr(importlib.import_module(module), name)
    check = fail_on_b(RuntimeError("boom"))

    def failing(*args, **kwargs):
        check(args[1])
        return real(*args, **kwargs)
    monkeypatch.setattr(target, failing)
    main, argv, problem = PREDICTORS[entry]
    status, _, err = run_entry_point(main, argv(checkpoints / f"{problem}.pt", three_images,
                                                tmp_path), capsys)
    assert status == 0, err
    assert f"warning: skipping {three_images / 'b.png'}: RuntimeError: boom" in err
    assert outputs(entry, tmp_path) == (["a.png", "c.png"] if entry.endswith("inference.py")
                                        else ["a", "c"])
    assert not list(tmp_path.rglob(".*.tmp"))


def test_a_run_stopped_partway_leaves_whole_files_and_no_temporary(three_images, checkpoints,
                                                                   tmp_path, monkeypatch, capsys):
    import hw3core.figures

    real = hw3core.figures.save_figure
    check = fail_on_b(KeyboardInterrupt())

    def interrupted_at_b(fig, path, dpi=100):
        check(path)
        return real(fig, path, dpi)
    monkeypatch.setattr(hw3core.figures, "save_figure", interrupted_at_b)
    status, _, err = run_entry_point(p2.visualize.main, [
        "--checkpoint", checkpoints / "p2.pt", "--images", three_images, "--out", tmp_path,
        "--max-len", "3", "--save-npy", "--batch-size", "1"], capsys)
    assert status == 130 and err.endswith("interrupted\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "a.png"]
    with Image.open(tmp_path / "a.png") as figure:
        figure.load()  # a whole PNG
    assert np.load(tmp_path / "a.npy").shape[0] == 1  # the model says [SEP] at once
    monkeypatch.undo()
    # captions are written once, at the end: a stopped run leaves no partial JSON-lines file
    real_caption = p2.decode.caption_images
    check = fail_on_b(KeyboardInterrupt())

    def caption_interrupted_at_b(model, images, **options):
        check(images)
        return real_caption(model, images, **options)
    monkeypatch.setattr(p2.decode, "caption_images", caption_interrupted_at_b)
    status, _, _ = run_entry_point(p2.inference.main, [
        "--checkpoint", checkpoints / "p2.pt", "--images", three_images, "--out",
        tmp_path / "c.jsonl", "--batch-size", "1"], capsys)
    assert status == 130 and not (tmp_path / "c.jsonl").exists()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("entry", ["p1/visualize.py", "p2/visualize.py"])
def test_figures_into_the_image_folder_are_refused_before_any_is_written(entry, three_images,
                                                                         checkpoints, tmp_path,
                                                                         capsys):
    images = tmp_path / "images"  # a.png's figure would replace a.png
    shutil.copytree(three_images, images)
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    main, argv, problem = PREDICTORS[entry]
    arguments = argv(checkpoints / f"{problem}.pt", images, tmp_path)
    arguments[arguments.index("--out") + 1] = images
    status, _, err = run_entry_point(main, arguments, capsys)
    one_line_error(status, err, f"{images} holds the input images: write the figures to another "
                                "folder")
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before
