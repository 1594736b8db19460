"""Caption files, caption batches, and synthetic scenes whose boxes and masks match the pixels."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from hw3core.errors import UserError
from hw3core.scenes import COLORS, SHAPES
from p2.data import (CAPTION_WORDS, check_caption_words, describe, load_masks, make_scene_set,
                     pad_tokens, read_caption_file, tokenize_captions)
from p2.tokenizer import END_ID, PAD_ID, START_ID, CaptionTokenizer


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    return folder, make_scene_set(folder, 40, seed=3, masks=True)


def test_every_caption_word_is_one_word_piece():
    tokenizer = CaptionTokenizer()
    check_caption_words(tokenizer)
    for word in CAPTION_WORDS:
        assert tokenizer.pieces(tokenizer.encode(word)[1:-1]) == [word]


def test_boxes_are_the_tight_boxes_of_the_drawn_masks(scenes):
    folder, layout = scenes
    from PIL import Image

    for name, objects in layout.items():
        masks = load_masks(folder, name)
        assert len(masks) == len(objects)
        with Image.open(folder / "images" / name) as image:
            pixels = np.asarray(image).astype(int)
        for mask, obj in zip(masks, objects):
            ys, xs = np.nonzero(mask)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == obj["box"], (name, obj)
            # the masked pixels are the object's colour (shade noise only)
            colour = np.array(COLORS[obj["color"]])
            assert np.abs(pixels[mask].mean(0) - colour).max() < 40, (name, obj)


def test_captions_name_the_objects_left_to_right(scenes):
    folder, layout = scenes
    content = json.loads((folder / "captions.json").read_text())
    names = {entry["id"]: entry["file_name"] for entry in content["images"]}
    counts = set()
    for annotation in content["annotations"]:
        objects = layout[names[annotation["image_id"]]]
        counts.add(len(objects))
        boxes = [o["box"] for o in objects]
        assert all(a[2] <= b[0] for a, b in zip(boxes, boxes[1:]))  # disjoint columns, in order
        expected = " to the left of ".join(f"a {o['color']} {o['shape']}" for o in objects)
        assert annotation["caption"] == expected
        assert all(o["shape"] in SHAPES for o in objects)
    assert counts == {1, 2, 3}
    assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(layout)


def test_describe_orders_by_position():
    from hw3core.scenes import SceneObject

    right = SceneObject("square", "blue", (50, 0, 60, 10), None)
    left = SceneObject("circle", "red", (0, 5, 10, 15), None)
    assert describe([right, left]) == "a red circle to the left of a blue square"


def test_read_caption_file_keeps_captioned_images_and_names_problems(tmp_path, capsys):
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 6)).save(tmp_path / "b.png")
    Image.new("RGB", (8, 6)).save(tmp_path / "c.png")
    caption_file = tmp_path / "captions.json"
    caption_file.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "c.png"}, {"id": 1, "file_name": "a.png"},
                   {"id": 2, "file_name": "b.png"}, {"id": 3, "file_name": "gone.png"},
                   {"id": 7, "file_name": "c.png"}],
        "annotations": [{"image_id": 1, "caption": "one"}, {"image_id": 7, "caption": "seven"},
                        {"image_id": 1, "caption": "two"}, {"image_id": 3, "caption": "three"},
                        {"image_id": 9, "caption": "x"}]}))
    samples = read_caption_file(caption_file, tmp_path)
    # the file's image order, each image with all its captions
    assert samples == [(tmp_path / "c.png", ["seven"]), (tmp_path / "a.png", ["one", "two"])]
    err = capsys.readouterr().err
    assert "image_id" in err and "no caption" in err
    assert (f"warning: skipping 1 image(s) listed in {caption_file} but not found in {tmp_path}: "
            "gone.png\n") in err
    assert f"1 image id(s) listed twice in 'images' of {caption_file}" in err
    # another split's image folder: one line, not one per image
    (tmp_path / "other").mkdir()
    with pytest.raises(UserError, match="no captioned image"):
        read_caption_file(caption_file, tmp_path / "other")
    assert capsys.readouterr().err.count("not found") == 1


@pytest.mark.parametrize("content, message", [
    (None, "not found"), ("{oops", "is not JSON"), ('{"images": []}', "not a COCO caption file"),
    ('{"images": [{"id": 1}], "annotations": []}', "images[0] needs"),
    ('{"images": [], "annotations": [{"caption": "x"}]}', "annotations[0] needs"),
    ('{"images": [], "annotations": []}', "no captioned image"),
])
def test_bad_caption_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "captions.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_caption_file(path, tmp_path)


def test_pad_tokens_masks_the_padding():
    tokens, padding = pad_tokens([[101, 5, 102], [101, 102]])
    assert tokens.tolist() == [[101, 5, 102], [101, 102, PAD_ID]]
    assert padding.tolist() == [[False, False, False], [False, False, True]]
    assert tokens.dtype == torch.long


def test_training_captions_end_in_sep_within_max_len_positions():
    # a caption of exactly --max-len positions keeps its [SEP]: the model learns to stop there
    tokenizer = CaptionTokenizer()
    short, long = "a red circle.", "a red circle to the left of a blue square."
    (ids,) = tokenize_captions([("a.png", [short, long])], tokenizer, 6)
    assert ids[0] == [START_ID, *tokenizer.encode(short)[1:-1], END_ID] and len(ids[0]) == 6
    assert ids[1] == tokenizer.encode(long)[:6] and END_ID not in ids[1]


def test_a_right_angle_rotation_keeps_every_pixel(monkeypatch):
    from p2.data import RightAngleRotation

    image = Image.fromarray(np.arange(8, dtype=np.uint8).reshape(2, 4))
    for angle in (0, 90, 180, 270):
        monkeypatch.setattr("random.choice", lambda options: angle)
        turned = np.asarray(RightAngleRotation()(image))
        assert turned.shape == ((2, 4) if angle in (0, 180) else (4, 2))
        assert sorted(turned.ravel()) == list(range(8))
