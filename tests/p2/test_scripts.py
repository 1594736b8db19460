"""The entry points: hw3_2.sh, p2/visualize.py and p2/inference.py on a folder of photos."""
import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from hw3core.cli import run_cli
from hw3core.images import open_rgb
import p2.cli
from p2 import figures, inference, visualize
from p2.data import preprocess
from p2.decode import caption_images
from p2.model import load_captioner, save_captioner
from p2.tokenizer import END_ID, START_ID
from tests.conftest import ROOT, env_without_torch, script_env
from tests.p2.p2_samples import sample_photos, small_model


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """wide.jpg, tall.png, square.jpg, plus an unreadable .jpg and a text file."""
    folder = tmp_path_factory.mktemp("photos")
    photos = sample_photos()
    photos["wide"].save(folder / "wide.jpg")
    photos["tall"].save(folder / "tall.png")
    photos["square"].save(folder / "square.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{'stops': a small model that ends every caption at once, 'runs': one that never ends}."""
    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, bias in (("stops", 50.0), ("runs", -50.0)):
        paths[name] = folder / f"{name}.pt"
        save_captioner(small_model(end_bias=bias), paths[name])
    return paths


def test_hw3_2_sh_writes_one_png_per_readable_image(photo_dir, checkpoints, tmp_path):
    out = tmp_path / "new" / "figures"
    run = subprocess.run(["bash", str(ROOT / "hw3_2.sh"), str(photo_dir), str(out)],
                         env=script_env(HW3_P2_CKPT=str(checkpoints["stops"]),
                                        OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["square.png", "tall.png", "wide.png"]
    assert "broken.jpg" in run.stderr and "notes.txt" not in run.stderr
    with Image.open(out / "wide.png") as figure:
        assert figure.format == "PNG" and figure.width > 200


def test_visualize_saves_maps_per_head(photo_dir, checkpoints, tmp_path, monkeypatch):
    sources = []

    def caption_figure(*args, draw=figures.caption_figure):
        sources.append(args[-1])
        return draw(*args)
    monkeypatch.setattr(figures, "caption_figure", caption_figure)
    visualize.main(["--checkpoint", str(checkpoints["runs"]), "--images", str(photo_dir),
                    "--out", str(tmp_path), "--max-len", "5", "--save-npy", "--heads", "all",
                    "--layer", "0", "--beam", "3"])
    layers = load_captioner(checkpoints["runs"])[1]["dec_layers"]
    assert sources == 3 * [f"cross-attention of decoder layer 0 (the first of {layers}, counted "
                           "from 0), the mean over its heads, then each head; each map on its "
                           "own colour scale"]
    maps = np.load(tmp_path / "tall.npy")
    # tall.png is resized to 87 x 299: a 10 x 3 grid of 32-pixel cells in the small model
    assert maps.dtype == np.float32 and maps.shape == (4, 4, 10, 3)
    np.testing.assert_allclose(maps.sum((2, 3)), 1.0, atol=1e-5)
    # each head of the first decoder layer, in order, for the beam's caption, as the library
    # gives them (the greedy caption is another)
    model = load_captioner(checkpoints["runs"])[0]
    tall = preprocess(open_rgb(photo_dir / "tall.png"), 299)
    first, last, greedy = (
        caption_images(model, [tall], max_len=5, beam=beam, attention_layer=layer,
                       per_head=True)[0] for beam, layer in ((3, 0), (3, -1), (1, 0)))
    np.testing.assert_allclose(maps, first.attention, atol=1e-6)
    assert not np.allclose(first.attention, last.attention, atol=1e-3)
    assert first.tokens != greedy.tokens
    assert (tmp_path / "tall.png").is_file() and not (tmp_path / "broken.png").exists()


def test_inference_writes_json_lines_in_name_order(photo_dir, checkpoints, tmp_path):
    out = tmp_path / "captions.jsonl"
    inference.main(["--checkpoint", str(checkpoints["runs"]), "--images", str(photo_dir),
                    "--out", str(out), "--max-len", "4", "--batch-size", "2"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["file"] for line in lines] == ["square.jpg", "tall.png", "wide.jpg"]
    for line in lines:
        assert len(line["tokens"]) == 4 and line["tokens"][0] == START_ID
        assert END_ID not in line["tokens"] and line["caption"][:1].isupper()
    written = out.read_text()
    inference.main(["--checkpoint", str(checkpoints["runs"]), "--images", str(photo_dir),
                    "--out", str(out), "--max-len", "4", "--batch-size", "2", "--workers", "1"])
    assert out.read_text() == written  # the images read by a worker process
    # --beam: the beam search's captions, here none of them the greedy one
    inference.main(["--checkpoint", str(checkpoints["runs"]), "--images", str(photo_dir),
                    "--out", str(out), "--max-len", "5", "--beam", "3"])
    model = load_captioner(checkpoints["runs"])[0]
    inputs = [preprocess(open_rgb(photo_dir / name), 299)
              for name in ("square.jpg", "tall.png", "wide.jpg")]
    beams, greedy = (caption_images(model, inputs, max_len=5, beam=beam) for beam in (3, 1))
    assert [json.loads(line)["tokens"] for line in out.read_text().splitlines()] == [
        found.tokens for found in beams]
    assert all(b.tokens != g.tokens for b, g in zip(beams, greedy))
    inference.main(["--checkpoint", str(checkpoints["stops"]), "--images", str(photo_dir),
                    "--out", str(out)])
    assert {line["caption"] for line in map(json.loads, out.read_text().splitlines())} == {""}
    assert json.loads(out.read_text().splitlines()[0])["tokens"] == [START_ID, END_ID]


@pytest.mark.parametrize("main", [visualize.main, inference.main], ids=["visualize", "inference"])
@pytest.mark.parametrize("case", ["empty folder", "missing checkpoint", "text checkpoint"])
def test_bad_inputs_are_one_line_errors(main, case, checkpoints, tmp_path, capsys):
    images, checkpoint = tmp_path / "images", checkpoints["stops"]
    images.mkdir()
    (images / "readme.txt").write_text("no images here\n")
    if case != "empty folder":
        Image.new("RGB", (40, 30)).save(images / "black.png")
        checkpoint = tmp_path / "missing.pth"
        if case == "text checkpoint":
            checkpoint.write_text("hello\n")
    argv = ["--checkpoint", str(checkpoint), "--images", str(images), "--out",
            str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and message.count("\n") == 1


def test_a_layer_the_model_lacks_is_refused_before_any_image_is_read(photo_dir, checkpoints,
                                                                     tmp_path, capsys):
    layers = load_captioner(checkpoints["stops"])[1]["dec_layers"]
    argv = ["--checkpoint", str(checkpoints["stops"]), "--images", str(photo_dir),
            "--out", str(tmp_path / "out"), "--layer", str(layers)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(visualize.main, argv)
    assert exit_info.value.code == 2
    # the one line, and no warning about broken.jpg: the images were not read
    assert capsys.readouterr().err == (f"error: --layer {layers}: the model has {layers} decoder "
                                       f"layers, 0 to {layers - 1} (or -{layers} to -1 from the "
                                       "end)\n")
    assert not (tmp_path / "out").exists()


def test_captions_are_not_written_over_an_input_image(photo_dir, checkpoints, tmp_path, capsys):
    image = tmp_path / "wide.jpg"
    image.write_bytes((photo_dir / "wide.jpg").read_bytes())
    argv = ["--checkpoint", str(checkpoints["stops"]), "--images", str(tmp_path), "--out",
            str(image)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(inference.main, argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: {image} is one of the input images, which the "
                                       "output would replace: give another path\n")
    assert image.read_bytes() == (photo_dir / "wide.jpg").read_bytes()


@pytest.mark.parametrize("main", [inference.main, visualize.main])
def test_the_missing_default_checkpoint_is_said_with_how_to_get_it(main, photo_dir, tmp_path,
                                                                   capsys, monkeypatch):
    monkeypatch.setenv("HW3_P2_CKPT", "")  # as `HW3_P2_CKPT= bash hw3_2.sh ...` sets it: unset
    monkeypatch.setattr(p2.cli, "DEFAULT_CHECKPOINT", tmp_path / "catr_v3.pth")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--images", str(photo_dir), "--out", str(tmp_path / "out.x")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: checkpoint not found: {tmp_path / 'catr_v3.pth'}: "
                                       "bash hw3_download.sh downloads it, or name another in "
                                       "HW3_P2_CKPT (p2/inference.py and p2/visualize.py: or "
                                       "--checkpoint)\n")


def test_images_that_would_share_a_figure_are_refused(checkpoints, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30)).save(images / "bike.jpg")
    Image.new("RGB", (40, 30)).save(images / "bike.png")
    argv = ["--checkpoint", str(checkpoints["stops"]), "--images", str(images),
            "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(visualize.main, argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "bike.jpg" in message and "bike.png" in message and message.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_images_of_extreme_shapes_are_captioned_not_skipped(checkpoints, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (3000, 10), "red").save(images / "wide strip.png")
    Image.new("RGB", (10, 3000), "blue").save(images / "tall strip.jpg")
    Image.new("RGB", (1, 1), "green").save(images / "dot.png")
    visualize.main(["--checkpoint", str(checkpoints["runs"]), "--images", str(images),
                    "--out", str(tmp_path / "out"), "--max-len", "3", "--save-npy"])
    # 299 x 1 and 1 x 299 pixels after resizing, never 0: one row or column of cells
    assert np.load(tmp_path / "out" / "wide strip.npy").shape == (2, 1, 10)
    assert np.load(tmp_path / "out" / "tall strip.npy").shape == (2, 10, 1)
    assert (tmp_path / "out" / "dot.png").is_file()


def test_an_unwritable_output_is_refused_before_the_model_loads(checkpoints, photo_dir, tmp_path,
                                                                monkeypatch, capsys):
    (tmp_path / "file").write_text("x")

    def no_model(*args):
        raise AssertionError("the model was loaded before the destination was checked")
    monkeypatch.setattr("p2.model.load_captioner", no_model)
    for main, out in ((visualize.main, tmp_path / "file" / "figures"),
                      (inference.main, tmp_path)):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, ["--checkpoint", str(checkpoints["runs"]), "--images", str(photo_dir),
                           "--out", str(out)])
        assert exit_info.value.code == 2
        message = capsys.readouterr().err
        assert message.startswith("error: ") and message.count("\n") == 1, message


@pytest.mark.parametrize("model, expected_tail", [("runs", []), ("stops", ["<end>"])])
def test_a_figure_has_the_caption_and_a_panel_per_generated_token(model, expected_tail, photo_dir,
                                                                  checkpoints, tmp_path,
                                                                  monkeypatch):
    import hw3core.figures
    from p2.tokenizer import CaptionTokenizer

    drawn = {}
    save = hw3core.figures.save_figure
    stride = small_model().stride  # the checkpoints' ResNet-18 to its last stage: 32 pixels

    def keep(fig, path, dpi=100):
        drawn[path.stem] = ([ax.get_title() for ax in fig.axes if ax.get_title()],
                            fig.get_suptitle())
        for ax in fig.axes:
            if len(ax.images) == 2:  # a map laid over the image: each cell on its own pixels
                (rows, columns), extent = ax.images[1].get_array().shape, ax.images[1].get_extent()
                assert tuple(extent) == (0, columns * stride, rows * stride, 0)
                assert 0 <= extent[1] - ax.get_xlim()[1] < stride
                assert 0 <= extent[2] - ax.get_ylim()[0] < stride
        save(fig, path, dpi)
    monkeypatch.setattr(hw3core.figures, "save_figure", keep)
    options = ["--checkpoint", str(checkpoints[model]), "--images", str(photo_dir),
               "--max-len", "5"]
    visualize.main([*options, "--out", str(tmp_path / "figures")])
    inference.main([*options, "--out", str(tmp_path / "captions.jsonl")])
    tokenizer = CaptionTokenizer()
    for line in map(json.loads, (tmp_path / "captions.jsonl").read_text().splitlines()):
        titles, caption = drawn[line["file"].rsplit(".", 1)[0]]
        generated = tokenizer.pieces(line["tokens"][1:])
        assert titles == ["<start>", *generated]
        assert generated[len(generated) - len(expected_tail):] == expected_tail
        assert len(titles) == (5 if model == "runs" else 2)
        # a caption that --max-len cut says so: its figure has no <end> panel either
        # "stops" ends at once: its empty caption is said in the title
        expected = line["caption"] + " ... (cut at --max-len 5)" if model == "runs" else (
            line["caption"] or "(empty caption)")
        assert caption.replace("\n", " ") == expected


@pytest.mark.parametrize("arguments", [[], ["only_one"], ["one", "two", "three"]])
def test_hw3_2_sh_wants_two_arguments(arguments):
    run = subprocess.run(["bash", str(ROOT / "hw3_2.sh"), *arguments], env=script_env(),
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr == "usage: bash hw3_2.sh IMAGE_DIR OUTPUT_DIR\n"


def test_hw3_2_sh_answers_a_missing_folder_before_importing_torch(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "hw3_2.sh"), str(tmp_path / "nope"),
                          str(tmp_path / "figures")],
                         env=env_without_torch(tmp_path / "no_torch"), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and run.stderr == f"error: not found: {tmp_path / 'nope'}\n"


def test_figure_layout_rows_per_token_cut_overhang_and_own_scales():
    import matplotlib.pyplot as plt

    image = np.zeros((40, 70, 3), dtype=np.uint8)  # cells of 16 pixels overhang: a 3 x 5 grid
    maps = np.random.default_rng(0).random((2, 3, 3, 5)).astype(np.float32)  # 2 tokens, 3 heads
    maps[1] *= 10
    panels, columns = figures.figure_panels(["cat", "<end>"], maps, per_head=True)
    assert columns == 4  # the mean, then each head
    assert [p and p[0] for p in panels] == [
        "<start>", None, None, None, "cat (mean)", "cat h0", "cat h1", "cat h2",
        "<end> (mean)", "<end> h0", "<end> h1", "<end> h2"]
    source = figures.maps_source(5, 6, 8, per_head=False)
    assert source == ("cross-attention of decoder layer 5 (the last of 6, counted from 0), the "
                      "mean over its 8 heads; each map on its own colour scale")
    assert figures.maps_source(2, 6, 8, per_head=False).startswith("cross-attention of decoder "
                                                                   "layer 2 (of 6, counted")
    empty = figures.draw_caption_figure(image, "", panels[:1], 1, stride=16)
    assert empty.get_suptitle() == "(empty caption)"
    figures.plt.close(empty)
    fig = figures.draw_caption_figure(image, "A cat.", panels, columns, stride=16, source=source)
    try:
        assert fig.get_suptitle() == "A cat." and fig.get_supxlabel() == source
        overlays = [ax for ax in fig.axes if len(ax.images) == 2]
        assert len(overlays) == 8
        for ax, (_, heat) in zip(overlays, [p for p in panels if p and p[1] is not None]):
            assert ax.get_xlim() == (0, 70) and ax.get_ylim() == (40, 0)  # the overhang is cut
            assert tuple(ax.images[1].get_extent()) == (0, 80, 48, 0)  # cells of 16 pixels
            assert ax.images[1].get_clim() == (heat.min(), heat.max())  # its own scale
        plain = [ax for ax in fig.axes if len(ax.images) == 1]
        assert [ax.get_title() for ax in plain] == ["<start>"]
    finally:
        plt.close(fig)


def test_figures_drawn_in_other_processes_are_the_same_files(photo_dir, checkpoints, tmp_path,
                                                             capsys):
    from tests.conftest import run_entry_point

    common = ["--checkpoint", checkpoints["runs"], "--images", photo_dir, "--max-len", "4",
              "--save-npy"]
    for workers in ("0", "1"):
        status, _, err = run_entry_point(visualize.main, [*common, "--out", tmp_path / workers,
                                                          "--draw-workers", workers], capsys)
        assert status == 0 and "broken.jpg" in err and "wrote 3 figure(s)" in err
    inline, drawn = sorted((tmp_path / "0").iterdir()), sorted((tmp_path / "1").iterdir())
    assert [p.name for p in inline] == [p.name for p in drawn] == [
        "square.npy", "square.png", "tall.npy", "tall.png", "wide.npy", "wide.png"]
    for a, b in zip(inline, drawn):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_more_drawing_processes_than_cores_allow_are_lowered_and_said(photo_dir, checkpoints,
                                                                      tmp_path, capsys,
                                                                      monkeypatch):
    import hw3core.runtime
    from tests.conftest import run_entry_point

    monkeypatch.setattr(hw3core.runtime, "usable_cores", lambda: 2)
    status, _, err = run_entry_point(visualize.main, [
        "--checkpoint", checkpoints["runs"], "--images", photo_dir, "--max-len", "4",
        "--out", tmp_path / "figures", "--draw-workers", "3"], capsys)
    assert status == 0 and "wrote 3 figure(s)" in err
    assert "note: 2 core(s) here: 1 drawing process(es) instead of 3\n" in err
