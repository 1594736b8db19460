"""hw3_1.sh end to end, as the course contract states it."""
import shutil
import subprocess

import pytest
import torch
from PIL import Image

from tests.conftest import ROOT, script_env
from p1.model import build_model, make_arch

AWKWARD_NAMES = ["dog.jpg", "1.jpg", "My Cat.PNG", "é chat, 2.jpeg", "0_0.jpg", "Zebra.png",
                 "whatever.png"]


def run_hw3_1(images, out, checkpoint):
    return subprocess.run(["bash", str(ROOT / "hw3_1.sh"), str(images), str(out)],
                          env=script_env(HW3_P1_CKPT=str(checkpoint)), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def awkward_folder(tmp_path, shapes_data):
    folder = tmp_path / "test images"
    folder.mkdir()
    sources = sorted(shapes_data[1].glob("*.png"))
    for name, source in zip(AWKWARD_NAMES, sources):
        Image.open(source).convert("RGB").save(folder / name, format="PNG" if name.lower().endswith(
            "png") else "JPEG")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, ignored")
    (folder / "text.png").write_text("an image by name only")
    (folder / "sub").mkdir()
    shutil.copy(sources[0], folder / "sub" / "inside.png")
    return folder


def test_csv_follows_the_contract(awkward_folder, trained_tiny, tmp_path):
    out = tmp_path / "new" / "dir" / "pred.csv"
    run = run_hw3_1(awkward_folder, out, trained_tiny / "best.pt")
    assert run.returncode == 0, run.stderr
    raw = out.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")
    lines = raw.decode("utf-8").splitlines()
    assert lines[0] == "filename,label"
    import csv
    rows = list(csv.reader(lines[1:]))
    assert [r[0] for r in rows] == sorted(AWKWARD_NAMES)  # every image once, names as on disk
    assert all(r[1] in {"0", "1", "2", "3"} for r in rows)
    for bad in ("empty.jpg", "text.png"):
        assert bad in run.stderr
    assert "notes.txt" not in run.stderr and "inside.png" not in raw.decode()
    assert [p.name for p in out.parent.iterdir()] == ["pred.csv"]  # no temporary left behind


def test_predictions_match_the_labels_of_the_images(shapes_data, trained_tiny, tmp_path):
    out = tmp_path / "pred.csv"
    assert run_hw3_1(shapes_data[1], out, trained_tiny / "best.pt").returncode == 0
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert len(rows) == 200
    accuracy = sum(name.split("_")[0] == label for name, label in rows) / len(rows)
    assert accuracy >= 0.85


def test_bare_state_dict_predicts_model_class_ids(awkward_folder, tmp_path):
    model = build_model(make_arch("tiny", 7, (32, 32)))
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    run = run_hw3_1(awkward_folder, tmp_path / "p.csv", tmp_path / "bare.pth")
    assert run.returncode == 0, run.stderr
    labels = {line.split(",")[-1] for line in (tmp_path / "p.csv").read_text().splitlines()[1:]}
    assert labels <= {str(i) for i in range(7)}


@pytest.mark.parametrize("case", ["empty folder", "missing folder", "missing checkpoint",
                                  "wrong checkpoint", "no arguments"])
def test_bad_calls_fail_with_one_clear_line(case, tmp_path, trained_tiny, awkward_folder):
    images, checkpoint = awkward_folder, trained_tiny / "best.pt"
    if case == "empty folder":
        images = tmp_path / "empty"
        images.mkdir()
        (images / "readme.txt").write_text("x")
    elif case == "missing folder":
        images = tmp_path / "nope"
    elif case == "missing checkpoint":
        checkpoint = tmp_path / "none.pt"
    elif case == "wrong checkpoint":
        checkpoint = tmp_path / "wrong.pt"
        checkpoint.write_text("hello")
    out = tmp_path / "out.csv"
    if case == "no arguments":
        run = subprocess.run(["bash", str(ROOT / "hw3_1.sh")], env=script_env(),
                             capture_output=True, text=True)
    else:
        run = run_hw3_1(images, out, checkpoint)
    assert run.returncode != 0
    message = run.stderr.strip().splitlines()
    assert len(message) == 1 and ("error" in message[0] or "usage" in message[0]), run.stderr
    assert not out.exists()
