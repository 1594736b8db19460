"""p1/visualize.py end to end: figures, .npy maps, unreadable files, and one-line errors."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT, env_without_torch, run_entry_point, save_p1_checkpoint
from hw3core.images import open_rgb
from p1 import figures, visualize
from p1.attention import attention_rollout, cls_attention, position_similarity
from p1.data import eval_resize, eval_transform, make_shapes_set
from p1.model import load_classifier


def library_input(checkpoint, path):
    """(model, the image as the model sees it, a batch of one) by the library's own functions."""
    model, preprocess, _ = load_classifier(checkpoint)
    transform = eval_transform(preprocess["image_size"], preprocess["mean"], preprocess["std"])
    return model.eval(), transform(open_rgb(path))[None]


@pytest.fixture
def run(capsys):
    """p1/visualize.py with these arguments, in this process: its status, stdout and stderr."""
    def call(*args):
        status, out, err = run_entry_point(visualize.main, args, capsys)
        return SimpleNamespace(returncode=status, stdout=out, stderr=err)
    return call


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("visualize")
    make_shapes_set(root / "images", 3, image_size=48, seed=3)
    (root / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    square = save_p1_checkpoint(root / "square.pt", (64, 64))
    wide = save_p1_checkpoint(root / "wide.pt", (64, 96))
    return {"root": root, "square": root / "square.pt", "wide": root / "wide.pt",
            "heads": square.blocks[-1].attn.num_heads, "wide_heads": wide.blocks[-1].attn.num_heads}


def good_stems(root):
    return sorted(p.stem for p in (root / "images").glob("*.png"))


def test_attention_folder_with_npy_and_a_bad_file(setup, run):
    out = setup["root"] / "new" / "nested" / "maps"
    result = run("attention", "--checkpoint", setup["square"], "--images",
                 setup["root"] / "images", "--out", out, "--save-npy", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert "broken.jpg" in result.stderr
    stems = good_stems(setup["root"])
    assert sorted(p.stem for p in out.glob("*.png")) == stems
    for stem in stems:
        heat = np.load(out / f"{stem}.npy")
        assert heat.shape == (8, 8) and heat.dtype == np.float32
        model, x = library_input(setup["square"], setup["root"] / "images" / f"{stem}.png")
        # the last block's [CLS] row over the patches, mean of heads: the report's map
        np.testing.assert_allclose(heat, cls_attention(model, x, -1)[0].mean(0).numpy(),
                                   atol=1e-6)
        with Image.open(out / f"{stem}.png") as img:
            assert img.format == "PNG" and img.width > 2 * img.height


def test_attention_all_heads_on_a_non_square_grid(setup, run):
    out = setup["root"] / "heads"
    first = sorted((setup["root"] / "images").glob("*.png"))[0]
    result = run("attention", "--checkpoint", setup["wide"], "--images", first, "--out", out,
                 "--heads", "all", "--layer", "0", "--save-npy")
    assert result.returncode == 0, result.stderr
    heads = np.load(out / f"{first.stem}.npy")
    assert heads.shape == (setup["wide_heads"], 8, 12)
    model, x = library_input(setup["wide"], first)
    # --layer counts from 0, as p2/visualize.py does: --layer 0 is the first block
    np.testing.assert_allclose(heads, cls_attention(model, x, 0)[0].numpy(), atol=1e-6)
    assert (out / f"{first.stem}.png").is_file()


def test_rollout_on_a_file_list(setup, run):
    out = setup["root"] / "rollout"
    files = sorted((setup["root"] / "images").glob("*.png"))[:2]
    result = run("attention", "--checkpoint", setup["wide"], "--images", *files, "--out", out,
                 "--method", "rollout", "--save-npy")
    assert result.returncode == 0, result.stderr
    for path in files:
        model, x = library_input(setup["wide"], path)
        np.testing.assert_allclose(np.load(out / f"{path.stem}.npy"),
                                   attention_rollout(model, x)[0].numpy(), atol=1e-6)


def test_a_missing_image_folder_is_answered_before_torch_loads(tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, str(ROOT / "p1" / "visualize.py"), "attention",
                          "--checkpoint", str(tmp_path / "c.pt"), "--images",
                          str(tmp_path / "nope"), "--out", str(tmp_path / "figures")],
                         env=env_without_torch(tmp_path / "no_torch"), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and run.stderr == f"error: not found: {tmp_path / 'nope'}\n"


def test_an_image_named_twice_is_drawn_once(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / "images" / name)
    (tmp_path / "link.png").symlink_to(tmp_path / "images" / "b.png")
    named = [tmp_path / "images", tmp_path / "images" / "a.png", tmp_path / "link.png"]
    assert visualize.collect_images(named, tmp_path / "out") == [
        tmp_path / "images" / "a.png", tmp_path / "images" / "b.png"]


def test_posemb_figure(setup, run, monkeypatch):
    drawn = []
    real_save = visualize.save_figure

    def keep(fig, path, dpi=100):
        drawn.append(fig.axes[0].images[0].get_array().filled(np.nan))
        real_save(fig, path, dpi)
    monkeypatch.setattr(visualize, "save_figure", keep)
    out = setup["root"] / "figs" / "posemb.png"
    result = run("posemb", "--checkpoint", setup["wide"], "--out", out)
    assert result.returncode == 0, result.stderr
    # tile (r, c) at row r, column c of the 8 x 12 grid (test_mosaic_places_tile_r_c_at_...)
    expected = figures.similarity_mosaic(position_similarity(load_classifier(setup["wide"])[0])
                                         .numpy())
    np.testing.assert_allclose(drawn[0], expected, atol=1e-6)
    with Image.open(out) as img:
        assert img.format == "PNG"
    result = run("posemb", "--checkpoint", setup["wide"], "--out", out.with_suffix(".jpg"))
    assert result.returncode == 2 and result.stderr.endswith(
        "posemb.jpg: the figure is a PNG; give a name ending in .png\n")
    assert not out.with_suffix(".jpg").exists()


@pytest.mark.parametrize("problem", ["missing checkpoint", "empty folder", "bad layer",
                                     "bad layer from the end"])
def test_user_errors_are_one_line(setup, problem, run):
    empty = setup["root"] / "empty"
    empty.mkdir(exist_ok=True)
    checkpoint = setup["root"] / "nope.pt" if problem == "missing checkpoint" else setup["square"]
    images = empty if problem == "empty folder" else setup["root"] / "images"
    extra = {"bad layer": ["--layer", "4"], "bad layer from the end": ["--layer", "-5"]}.get(
        problem, [])  # the tiny preset's 4 blocks are 0 to 3, or -4 to -1
    result = run("attention", "--checkpoint", checkpoint, "--images", images,
                 "--out", setup["root"] / "unused", *extra)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_mosaic_places_tile_r_c_at_row_r_column_c():
    from p1.figures import similarity_mosaic

    similarity = np.random.default_rng(0).random((3, 5, 3, 5)).astype(np.float32)
    mosaic = similarity_mosaic(similarity, gap=1)
    assert mosaic.shape == (3 * 4 - 1, 5 * 6 - 1)
    for r in range(3):
        for c in range(5):
            np.testing.assert_array_equal(mosaic[r * 4:r * 4 + 3, c * 6:c * 6 + 5],
                                          similarity[r, c])
    assert np.isnan(mosaic[3]).all() and np.isnan(mosaic[:, 5]).all()


def test_the_attention_figure_shows_the_input_its_map_on_its_own_scale_and_the_prediction(
        setup, run, monkeypatch):
    drawn = {}
    real_save = visualize.save_figure

    def keep(fig, path, dpi=100):
        ax_image, ax_map = fig.axes[:2]
        drawn[path.stem] = (ax_image.get_title(), ax_map.images[0].get_clim(),
                            fig.get_suptitle(), ax_image.images[0].get_array(),
                            ax_map.images[0].get_array())
        real_save(fig, path, dpi)
    monkeypatch.setattr(visualize, "save_figure", keep)
    first = sorted((setup["root"] / "images").glob("*.png"))[0]
    out = setup["root"] / "contents"
    assert run("attention", "--checkpoint", setup["wide"], "--images", first, "--out", out,
               "--save-npy").returncode == 0
    title, clim, heading, shown, drawn_map = drawn[first.stem]
    assert title == "input as the model saw it\n(64 high, 96 wide)"
    seen = eval_resize((64, 96))(open_rgb(first)).permute(1, 2, 0).numpy() / 255
    np.testing.assert_allclose(shown, seen, atol=1e-6)  # its colours, not the normalised values
    heat = np.load(out / f"{first.stem}.npy")
    np.testing.assert_array_equal(drawn_map, heat)  # the 8 x 12 map as saved, not transposed
    assert clim == pytest.approx((heat.min(), heat.max()))  # the map's own range
    model, x = library_input(setup["wide"], first)
    with torch.no_grad():
        probability = model(x).softmax(-1)[0]
    predicted = int(probability.argmax())
    names = ["red", "green", "blue", "yellow"]
    assert heading == (f"{first.name}: predicted class {names[predicted]} "
                       f"({probability[predicted]:.1%})")


def test_the_heading_gives_the_true_class_where_the_name_or_folder_gives_one():
    probability = torch.tensor([0.1, 0.7, 0.2])
    course = [str(c) for c in range(3)]
    heading = figures.prediction_heading
    assert heading(Path("val/2_17.jpg"), probability, course) == (
        "2_17.jpg: predicted class 1 (70.0%), true class 2")
    assert heading(Path("val/02_17.jpg"), probability, course).endswith(", true class 2")
    assert (heading(Path("val/7_17.jpg"), probability, course)
            == "7_17.jpg: predicted class 1 (70.0%)")
    pets = ["cat", "dog", "fish"]
    assert heading(Path("val/dog/1.jpg"), probability, pets) == (
        "1.jpg: predicted class dog (70.0%), true class dog")
    assert heading(Path("photos/1.jpg"), probability, pets) == "1.jpg: predicted class dog (70.0%)"


def test_the_colour_bar_marks_evenly_spread_attention_where_the_map_reaches_it():
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    for low, marked in ((0.05, True), (0.1, False)):  # 1/12 = 0.083 inside the range, or below it
        heat = np.linspace(low, 0.2, 6, dtype=np.float32).reshape(2, 3)
        fig = figures.plot_single_map(image, heat, "map", "heading", tokens=12)
        try:
            bar = fig.axes[-1]
            assert bar.get_ylabel() == "attention weight (dashed: 1/12, spread evenly)"
            levels = [line.get_ydata()[0] for line in bar.lines]  # a white line, dashes on it
            assert levels == ([pytest.approx(1 / 12)] * 2 if marked else [])
        finally:
            figures.plt.close(fig)


def test_attended_tokens_count_the_prefix_tokens_and_every_patch():
    from p1.attention import attended_tokens
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=(32, 48), patch_size=8, embed_dim=16, depth=1,
                              num_heads=2, reg_tokens=2)
    assert attended_tokens(model) == 3 + 4 * 6  # [CLS], 2 registers, a 4 x 6 grid


def test_the_reports_figure_lays_the_map_on_the_photo_at_its_own_shape():
    photo = np.zeros((120, 300, 3), dtype=np.uint8)
    heat = np.arange(12, dtype=np.float32).reshape(3, 4)
    fig = figures.plot_on_original(photo, heat, "map", "heading", tokens=13)
    try:
        ax_photo, ax_map = fig.axes[:2]
        assert ax_photo.images[0].get_array().shape[:2] == (120, 300)  # not resized to a square
        assert ax_map.get_xlim() == (0, 300) and ax_map.get_ylim() == (120, 0)
        overlay = ax_map.images[1]
        assert overlay.get_extent() == [0, 300, 120, 0]  # 4 x 3 cells of 75 x 40 pixels
        assert overlay.get_clim() == (0.0, 11.0) and overlay.get_interpolation() == "nearest"
    finally:
        figures.plt.close(fig)
