import json

import numpy as np
import pytest
from PIL import Image

from hw3core.errors import UserError
from p1.data import discover


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


def test_course_layout_labels_come_from_names(tmp_path, capsys):
    for name in ("10_1.jpg", "2_7.jpg", "2_3.png", "0_9.jpg", "cat.jpg"):
        _img(tmp_path / name)
    (tmp_path / "readme.txt").write_text("x")
    samples, classes = discover(tmp_path)
    assert classes == ["0", "2", "10"]  # numeric order, names are the labels
    assert [(p.name, classes[i]) for p, i in samples] == [
        ("0_9.jpg", "0"), ("10_1.jpg", "10"), ("2_3.png", "2"), ("2_7.jpg", "2")]
    assert "cat.jpg" in capsys.readouterr().err


def test_class_folder_layout(tmp_path):
    for name in ("dog/1.jpg", "cat/a.png", "cat/b.jpg"):
        _img(tmp_path / name)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bird").mkdir()  # only a link to a deleted image: no class
    (tmp_path / "bird" / "1.jpg").symlink_to(tmp_path / "deleted.jpg")
    (tmp_path / "dog" / "2.jpg").symlink_to(tmp_path / "deleted.jpg")  # named when it is read
    samples, classes = discover(tmp_path)
    assert classes == ["cat", "dog"]
    assert [(p.name, i) for p, i in samples] == [("a.png", 0), ("b.jpg", 0), ("1.jpg", 1),
                                                 ("2.jpg", 1)]


def test_validation_uses_training_classes(tmp_path):
    _img(tmp_path / "train" / "3_1.jpg")
    _img(tmp_path / "train" / "5_1.jpg")
    _img(tmp_path / "val" / "5_2.jpg")
    _img(tmp_path / "bad" / "7_2.jpg")
    _, classes = discover(tmp_path / "train")
    assert discover(tmp_path / "val", classes)[0][0][1] == 1
    with pytest.raises(UserError, match="7_2.jpg"):
        discover(tmp_path / "bad", classes)


def test_no_images_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no labelled images"):
        discover(tmp_path)
    with pytest.raises(UserError, match="not found"):
        discover(tmp_path / "missing")


def test_a_guess_between_layouts_or_a_single_class_is_refused(tmp_path):
    # a stray subfolder beside course-named images would make its one image the only class
    for name in ("0_1.jpg", "1_2.jpg", "old/0_1.jpg"):
        _img(tmp_path / "mixed" / name)
    with pytest.raises(UserError, match=r"holds both images \(0_1.jpg, ...\) and class "
                                        r"folders \(old/, ...\)"):
        discover(tmp_path / "mixed")
    for name in ("3_1.jpg", "3_2.jpg"):
        _img(tmp_path / "one" / name)
    with pytest.raises(UserError, match=r"of one class \('3'\): a classifier is trained on two"):
        discover(tmp_path / "one")
    # a validation set may hold fewer classes than the training set
    assert discover(tmp_path / "one", ["3", "5"])[0][0][1] == 0


def test_images_decoded_once_draw_the_augmentations_the_workers_draw(tmp_path, capsys):
    import numpy as np
    import torch
    from torchvision.transforms import v2

    from hw3core.training import SeededItems
    from p1.data import (DecodedImages, LabelledImages, ScaleNormalize, eval_resize,
                         eval_transform, train_transform)

    rng = np.random.default_rng(0)
    samples = []
    for i, (height, width) in enumerate([(40, 60), (40, 60), (75, 30), (33, 33)]):
        path = tmp_path / f"{i % 2}_{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        samples.append((path, i % 2))
    (tmp_path / "0_4.jpg").write_bytes(b"not an image")
    samples.append((tmp_path / "0_4.jpg", 0))
    # the same picture twice: each copy must draw its own crop, flip and operations
    (tmp_path / "1_1.png").write_bytes((tmp_path / "0_0.png").read_bytes())
    size, mean, std = (24, 32), [0.5] * 3, [0.25] * 3
    augment = train_transform(size, "randaugment", 0.25)
    cpu = torch.device("cpu")
    decoded = SeededItems(DecodedImages(samples, v2.ToImage(), augment, cpu), seed=3)
    assert "0_4.jpg" in capsys.readouterr().err  # named once, when decoded
    from_files = SeededItems(LabelledImages(samples, augment), seed=3)
    for key in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 2), (0, 4)]:
        want, got = from_files[key], decoded[key]
        if want is None:
            assert got is None
            continue
        assert got[1] == want[1] and got[0].shape == (3, *size)
        assert torch.equal(got[0], want[0]), key
    assert not torch.equal(decoded[0, 0][0], decoded[0, 1][0])
    assert not torch.equal(decoded[0, 2][0], decoded[1, 2][0])  # a new draw each epoch
    kept = DecodedImages(samples, eval_resize(size), None, cpu)
    files = LabelledImages(samples, eval_transform(size, mean, std))
    by_torchvision = LabelledImages(samples, v2.Compose([
        *eval_resize(size).transforms, v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std)]))
    batch = ScaleNormalize(mean, std)(torch.stack([kept[index][0] for index in range(4)]))
    for index in range(4):  # a batch normalised as a whole is each image normalised alone
        assert kept[index][0].dtype == torch.uint8
        assert torch.equal(files[index][0], by_torchvision[index][0])
        assert torch.equal(batch[index], by_torchvision[index][0])


def test_decoding_once_uses_no_more_workers_than_shared_memory_holds_images(tmp_path, capsys,
                                                                            monkeypatch):
    import types

    import torch

    import hw3core.runtime as runtime
    from hw3core.runtime import Distributed
    from p1.engine import build_loaders
    from p1.train import parse_args

    samples = [(tmp_path / f"0_{i}.png", 0) for i in range(3)]
    for (path, _), size in zip(samples, [(40, 30), (200, 100), (50, 50)]):
        Image.new("RGB", size, (200, 30, 30)).save(path)
    args = parse_args(["--train-dir", str(tmp_path), "--out", str(tmp_path / "run"),
                       "--pretrained", "none", "--image-cache", "ram", "--batch-size", "2"])
    preprocess = {"image_size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}

    def build(free, processes=1):
        monkeypatch.setattr(runtime.shutil, "disk_usage",
                            lambda folder: types.SimpleNamespace(free=free))
        train, val = build_loaders(args, preprocess, samples, samples, 2, torch.device("cpu"),
                                   Distributed(local_world_size=processes))
        assert [tuple(image.shape) for image in train.dataset.images] == [
            (3, 30, 40), (3, 100, 200), (3, 50, 50)]
        assert [tuple(image.shape) for image in val.dataset.dataset.images] == [(3, 32, 32)] * 3
        return [line for line in capsys.readouterr().out.splitlines() if "room for" in line]

    # a worker hands over up to two decoded images and one is in use: room for two training
    # images at their own size (the largest 60,000 bytes) holds no worker; the validation
    # images are handed over resized (3,072 bytes), and room for two holds both workers
    notes = build(2 * 60_000)
    assert len(notes) == 1 and "room for the batches of 0 data loader worker(s), not 2" in notes[0]
    assert build(5 * 60_000) == []
    # torchrun's processes on one machine share it
    notes = build(5 * 60_000, processes=2)
    assert len(notes) == 1 and "of 0 data loader worker(s), not 2" in notes[0]


def test_the_shapes_sets_boxes_are_where_its_shapes_are(tmp_path):
    # bench/p1_attention.py measures the maps against these boxes
    from hw3core.scenes import COLORS
    from p1.data import make_shapes_set

    boxes = make_shapes_set(tmp_path, 12, image_size=64, seed=5)
    assert json.loads((tmp_path / "boxes.json").read_text()) == boxes
    for name, (x0, y0, x1, y1) in boxes.items():
        pixels = np.asarray(Image.open(tmp_path / name)).astype(int)
        colour = np.array(COLORS[list(COLORS)[int(name.split("_")[0])]])
        assert np.abs(pixels[(y0 + y1) // 2, (x0 + x1) // 2] - colour).max() < 40, name
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    assert any(box[0] != box[1] for box in boxes.values())  # a box given as (y, x) would fail
