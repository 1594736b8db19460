"""p2/demo.py end to end: scenes, the scene recipe's training, hw3_2.sh figures, caption report."""
import os
import shlex
import sys

from PIL import Image

from hw3core.checkpoints import load_checkpoint
from p2 import demo
from p2.data import CAPTION_WORDS
from p2.tokenizer import CaptionTokenizer


def test_demo_trains_the_small_captioner_and_draws_held_out_scenes(tmp_path, capsys):
    # a previous demo's held-out scene, which hw3_2.sh would caption again
    (tmp_path / "scenes" / "heldout" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(tmp_path / "scenes" / "heldout" / "images" / "scene_9.png")
    demo.main(["--out", str(tmp_path), "--epochs", "1", "--train-scenes", "16", "--show", "1",
               "--val-scenes", "6", "--seed", "3"])
    figures = sorted(p.name for p in (tmp_path / "p2_figures").glob("*.png"))
    assert figures == ["scene_000022.png"]  # after 16 training and 6 validation scenes
    out = capsys.readouterr().out
    assert "held-out captions exactly right (0% of the 6 validation captions)" in out
    # one epoch on 16 scenes leaves the shapes unlearnt: the demo says how to train on enough
    command = [sys.executable, os.path.relpath(demo.__file__), "--out", str(tmp_path),
               "--train-scenes", "16", "--val-scenes", "6", "--epochs", "1000", "--seed", "3"]
    assert ("this run trained on 16 images, and the captioner learns the colours first, the "
            f"shapes after about 8,000 to 12,000. Train longer (16,000 images): "
            f"{shlex.join(command)}") in out
    config = load_checkpoint(tmp_path / "p2_run" / "best.pt")["config"]
    assert config["backbone"] == "resnet18" and config["input_size"] == 128
    said = set(CaptionTokenizer().pieces(config["output_tokens"]))
    assert said - {"<end>"} <= set(CAPTION_WORDS)


def test_the_advice_to_train_longer_comes_below_half_right_with_enough_images():
    from types import SimpleNamespace

    def advised(val_exact, scenes, epochs):
        args = SimpleNamespace(out="demo_out", train_scenes=scenes, epochs=epochs,
                               val_scenes=30, seed=0)
        advice = demo.train_longer_advice(val_exact, args)
        return advice and int(shlex.split(advice.rsplit(": ", 1)[1])[-3])
    assert advised(0.5, 16, 1) is None
    assert advised(0.49, 16, 1) == 1000  # 16,000 images
    assert advised(0.3, 4000, 4) == 8  # enough images already: 4 epochs more
