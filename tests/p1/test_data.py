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
    samples, classes = discover(tmp_path)
    assert classes == ["cat", "dog"]
    assert [(p.parent.name, i) for p, i in samples] == [("cat", 0), ("cat", 0), ("dog", 1)]


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
