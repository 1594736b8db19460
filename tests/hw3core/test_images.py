import warnings

import numpy as np
import pytest
from PIL import Image

from tests.conftest import require_names_kept
from hw3core.images import (ImageFileDataset, UnreadableImage, collate_skip, decoded_bytes,
                            list_images, open_rgb)


def test_list_images_keeps_images_only_sorted_by_name(tmp_path):
    names = ("b.JPG", "a b é.png", "C.jpeg", "notes.txt", ".hidden.jpg")
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    require_names_kept(tmp_path, names)
    (tmp_path / "sub.jpg").mkdir()
    (tmp_path / "gone.png").symlink_to(tmp_path / "deleted.png")  # named when it fails to open
    assert [p.name for p in list_images(tmp_path)] == ["C.jpeg", "a b é.png", "b.JPG", "gone.png"]
    with pytest.raises(UnreadableImage, match="gone.png"):
        open_rgb(tmp_path / "gone.png")


def test_a_folder_of_class_subfolders_is_refused_with_the_hint_to_give_one(tmp_path):
    from hw3core.errors import UserError
    from hw3core.images import require_images

    for name in ("dog", "cat"):
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "val" / name / "1.jpg")
    (tmp_path / "val" / "notes").mkdir()  # no images: not named
    with pytest.raises(UserError, match=r"no image files in .*val \(its subfolders cat, dog hold "
                                        r"images, but only the folder itself is read: give one "
                                        r"of them\)$"):
        require_images(tmp_path / "val")
    with pytest.raises(UserError, match=r"no image files in .*notes$"):
        require_images(tmp_path / "val" / "notes")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_opens_as_rgb(tmp_path, mode):
    gray = np.tile(np.linspace(0, 1, 16), (8, 1))
    if mode == "I;16":
        img = Image.fromarray((gray * 65535).astype(np.uint16))
    elif mode in ("I", "F"):
        img = Image.fromarray((gray * 1000).astype(np.int32 if mode == "I" else np.float32))
    else:
        img = Image.fromarray((gray * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("I", "F", "CMYK") else "x.png")
    img.save(path)
    rgb = np.asarray(open_rgb(path))
    assert rgb.shape == (8, 16, 3)
    # the full range survives: dark on the left, bright on the right, not clipped white
    assert rgb[:, 0].mean() < 60 and rgb[:, -1].mean() > 190
    if mode != "1":  # and every level between (a palette's nearest), scaled, not clipped
        np.testing.assert_allclose(rgb.mean((0, 2)) / 255, gray[0], atol=0.11)


def test_a_float_images_missing_values_open_black_without_a_warning(tmp_path):
    values = np.full((4, 4), 500.0, dtype=np.float32)
    values[0, :3] = (np.nan, np.inf, -np.inf)
    Image.fromarray(values).save(tmp_path / "dem.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = np.asarray(open_rgb(tmp_path / "dem.tif"))
    assert (rgb[0, :3] == 0).all() and (rgb[1:] == 255).all()


@pytest.mark.parametrize("kind", ["alpha", "palette"])
def test_transparent_pixels_become_white(tmp_path, kind):
    if kind == "alpha":
        img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
        img.putpixel((0, 0), (0, 0, 255, 255))
        name, options = "a.png", {}
    else:  # a GIF whose palette's red entry is the transparent one
        img = Image.new("P", (4, 4), 1)
        img.putpalette([0, 0, 255, 255, 0, 0])
        img.putpixel((0, 0), 0)
        name, options = "a.gif", {"transparency": 1}
    img.save(tmp_path / name, **options)
    rgb = np.asarray(open_rgb(tmp_path / name))
    assert tuple(rgb[0, 0]) == (0, 0, 255) and tuple(rgb[3, 3]) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert open_rgb(tmp_path / "r.jpg").size == (10, 30)


def test_unreadable_files_raise_naming_the_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    Image.new("RGB", (64, 64)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name in ("empty.jpg", "text.png", "cut.png"):
        with pytest.raises(UnreadableImage, match=name):
            open_rgb(tmp_path / name)


def test_pillows_limit_set_deliberately_decides_what_is_too_large(tmp_path, monkeypatch):
    from hw3core.images import MAX_PIXELS

    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS >= 200_000_000  # a 200 MP phone photo opens
    Image.new("L", (100, 100)).save(tmp_path / "at_limit.png")
    Image.new("L", (101, 100)).save(tmp_path / "over.png")
    Image.new("L", (300, 100)).save(tmp_path / "far_over.png")  # past Pillow's own hard stop
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    assert open_rgb(tmp_path / "at_limit.png").size == (100, 100)
    for name in ("over.png", "far_over.png"):
        with pytest.raises(UnreadableImage, match=f"{name}: more than 10,000 pixels, too large"):
            open_rgb(tmp_path / name)
    # sized from their headers (the decode-once cache, the first-readable check) the same way
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        assert [decoded_bytes(tmp_path / name) for name in ("at_limit.png", "over.png",
                                                            "far_over.png")] == [30_000, 0, 0]
    assert warned == []  # no raw Pillow warning among the run's lines


def test_dataset_skips_unreadable_and_warns(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_text("nope")
    ds = ImageFileDataset([tmp_path / "bad.png", tmp_path / "good.png"],
                          lambda im: np.asarray(im, dtype=np.float32))
    batch = collate_skip([ds[0], ds[1]])
    assert batch[1].tolist() == [1]
    assert "bad.png" in capsys.readouterr().err
    assert collate_skip([ds[0]]) is None


def test_figures_never_go_where_they_would_replace_or_join_the_images(tmp_path):
    from hw3core.errors import UserError
    from hw3core.images import require_outputs_apart

    data, links, figures = tmp_path / "data", tmp_path / "links", tmp_path / "figures"
    for folder in (data, links, figures):
        folder.mkdir()
    Image.new("RGB", (4, 4)).save(data / "x.png")
    (links / "x.png").symlink_to(data / "x.png")  # a folder of links to the images
    require_outputs_apart([links / "x.png"], figures)
    require_outputs_apart([links / "x.png"], data / "figures")  # a folder of its own inside
    with pytest.raises(UserError, match=f"{links} holds the input images"):
        require_outputs_apart([links / "x.png"], links)
    with pytest.raises(UserError, match=f"{data} holds the input images"):
        require_outputs_apart([data / "x.png"], tmp_path / "data" / ".." / "data")
    (figures / "x.png").symlink_to(data / "x.png")  # a figure written through it: the image
    with pytest.raises(UserError, match=f"{figures / 'x.png'} links to an input image"):
        require_outputs_apart([links / "x.png"], figures)
    with pytest.raises(UserError, match="would both be written as x.png"):
        require_outputs_apart([links / "x.png", tmp_path / "x.jpg"], tmp_path / "new")


def test_figures_are_refused_among_the_images_named_by_relative_paths(tmp_path, monkeypatch):
    from hw3core.errors import UserError
    from hw3core.images import require_outputs_apart

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.jpg").write_bytes(b"")
    (tmp_path / "also").symlink_to(tmp_path / "data")
    for out in ("data", "./data/", str(tmp_path / "data"), "also"):
        with pytest.raises(UserError, match="holds the input images"):
            require_outputs_apart(["data/x.jpg"], out)
    require_outputs_apart(["data/x.jpg"], "figures")
