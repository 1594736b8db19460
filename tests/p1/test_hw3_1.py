"""hw3_1.sh end to end, as the course contract states it. The shell wrapper itself runs in a few
tests; the rest call p1/inference.py's main in this process, which is what the wrapper runs."""
import shutil
import subprocess

import pytest
import torch
from PIL import Image

from tests.conftest import (ROOT, env_without_torch, require_names_kept, run_entry_point,
                            save_p1_checkpoint, script_env)
from hw3core.checkpoints import load_checkpoint
from hw3core.images import list_images
from hw3core.runtime import pick_device
from p1 import inference
from p1.engine import predict_files
from p1.model import build_model, load_classifier, make_arch

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
    require_names_kept(folder, AWKWARD_NAMES)
    return folder


def test_csv_follows_the_contract(awkward_folder, trained_tiny, tmp_path):
    out = tmp_path / "new" / "dir" / "pred.csv"
    run = run_hw3_1(awkward_folder, out, trained_tiny / "best.pt")
    assert run.returncode == 0, run.stderr
    raw = out.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf") and b"\r" not in raw  # no BOM, "\n" line ends
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


def test_csv_holds_the_models_prediction_for_every_image(shapes_data, trained_tiny, tmp_path,
                                                         capsys):
    out = tmp_path / "pred.csv"
    argv = ["--images", shapes_data[1], "--out", out, "--checkpoint", trained_tiny / "best.pt"]
    status, _, _ = run_entry_point(inference.main, argv, capsys)
    assert status == 0
    model, preprocess, class_names = load_classifier(trained_tiny / "best.pt")
    paths = list_images(shapes_data[1])
    expected = predict_files(model, preprocess, paths, pick_device("cpu"), batch_size=7, workers=0)
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert rows == [[path.name, class_names[expected[path]]] for path in paths]
    assert len(rows) == 200 and len({label for _, label in rows}) > 1
    # as right as the run's validation on the same images (the same preprocessing): within two
    # images, which another batching's floats may tip
    right = sum(label == name.split("_")[0] for name, label in rows) / len(rows)
    validated = load_checkpoint(trained_tiny / "best.pt")["val_acc"]
    assert right == pytest.approx(validated, abs=0.011)


def test_prediction_goes_on_past_a_batch_of_unreadable_images(shapes_data, tmp_path):
    good = sorted(shapes_data[1].glob("*.png"))[:2]
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"not an image")
    paths = [tmp_path / "a.png", tmp_path / "b.png", *good]
    save_p1_checkpoint(tmp_path / "p1.pt", (32, 32))
    model, preprocess, _ = load_classifier(tmp_path / "p1.pt")
    found = predict_files(model, preprocess, paths, pick_device("cpu"), batch_size=2, workers=0)
    assert sorted(found) == good


def test_labels_are_the_checkpoints_class_names(shapes_data, tmp_path, capsys):
    # a run on class folders names its classes: the CSV gives the names, not the head's indices
    save_p1_checkpoint(tmp_path / "named.pt", (32, 32), class_names=("cat", "dog", "fox"))
    status, _, err = run_entry_point(inference.main, ["--images", shapes_data[1], "--out",
                                                      tmp_path / "p.csv", "--checkpoint",
                                                      tmp_path / "named.pt"], capsys)
    assert status == 0, err
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert len(rows) == 200 and {row.split(",")[1] for row in rows} <= {"cat", "dog", "fox"}


def test_bare_state_dict_predicts_model_class_ids(awkward_folder, tmp_path, capsys):
    model = build_model(make_arch("tiny", 7, (32, 32)))
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    status, _, err = run_entry_point(inference.main, ["--images", awkward_folder, "--out",
                                                      tmp_path / "p.csv", "--checkpoint",
                                                      tmp_path / "bare.pth"], capsys)
    assert status == 0, err
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert len(rows) == len(AWKWARD_NAMES)
    assert {row.rsplit(",", 1)[-1] for row in rows} <= {str(i) for i in range(7)}


@pytest.mark.parametrize("case", ["empty folder", "missing folder", "missing checkpoint",
                                  "wrong checkpoint"])
def test_bad_calls_fail_with_one_clear_line(case, tmp_path, trained_tiny, awkward_folder, capsys):
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
    status, _, err = run_entry_point(inference.main, ["--images", images, "--out", out,
                                                      "--checkpoint", checkpoint], capsys)
    assert status == 2
    message = err.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("error: "), err
    assert not out.exists()


@pytest.mark.parametrize("arguments", [[], ["only_one"], ["one", "two", "three"]])
def test_the_wrapper_wants_two_arguments(arguments):
    run = subprocess.run(["bash", str(ROOT / "hw3_1.sh"), *arguments], env=script_env(),
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr == "usage: bash hw3_1.sh IMAGE_DIR OUTPUT.csv\n"


def test_the_wrapper_passes_errors_through_as_status_2_before_importing_torch(tmp_path,
                                                                              trained_tiny):
    # a mistyped folder is answered at once, not after seconds of importing torch
    run = subprocess.run(["bash", str(ROOT / "hw3_1.sh"), str(tmp_path / "nope"),
                          str(tmp_path / "out.csv")],
                         env=env_without_torch(tmp_path / "no_torch",
                                               HW3_P1_CKPT=str(trained_tiny / "best.pt")),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr == f"error: not found: {tmp_path / 'nope'}\n"


@pytest.mark.parametrize("destination", ["an existing folder", "a path through a file",
                                         "a new folder", "one of the images"])
def test_an_unwritable_csv_path_is_refused_before_any_work(destination, awkward_folder,
                                                           trained_tiny, tmp_path, capsys,
                                                           monkeypatch):
    from hw3core.images import list_images

    out = tmp_path
    if destination == "a path through a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "pred.csv"
    elif destination == "a new folder":
        out = f"{tmp_path}/new/"
    elif destination == "one of the images":
        out = list_images(awkward_folder)[0]

    def no_model(*args):
        raise AssertionError("the model was loaded before the destination was checked")
    monkeypatch.setattr("p1.model.load_classifier", no_model)
    status, _, err = run_entry_point(inference.main, ["--images", awkward_folder, "--out", out,
                                                      "--checkpoint", trained_tiny / "best.pt"],
                                     capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    if destination == "one of the images":
        assert err == (f"error: {out} is one of the input images, which the output would "
                       "replace: give another path\n")


def test_an_empty_checkpoint_variable_means_the_default_checkpoint(monkeypatch, tmp_path,
                                                                   awkward_folder, capsys):
    monkeypatch.setenv("HW3_P1_CKPT", "")  # as `HW3_P1_CKPT= bash hw3_1.sh ...` sets it
    args = inference.parse_args(["--images", "i", "--out", "o.csv"])
    assert args.checkpoint == str(inference.DEFAULT_CHECKPOINT)
    # not there yet: said with how to make it
    monkeypatch.setattr(inference, "DEFAULT_CHECKPOINT", tmp_path / "p1_vit.pt")
    status, _, err = run_entry_point(inference.main, ["--images", awkward_folder, "--out",
                                                      tmp_path / "o.csv"], capsys)
    # hw3_1.sh takes the environment variable only: it comes first
    assert status == 2 and err == (f"error: checkpoint not found: {tmp_path / 'p1_vit.pt'}: copy "
                                   "a run's best.pt (or last.pt) there (README: Fine-tune), or "
                                   "name one in HW3_P1_CKPT (p1/inference.py: or --checkpoint)\n")
