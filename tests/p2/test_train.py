"""p2/train.py on a few synthetic scenes: learning, resuming exactly, starting from a checkpoint."""
import json
import math

import pytest
import torch

from hw3core.checkpoints import load_checkpoint, save_checkpoint
from hw3core.errors import UserError
from p2 import inference
from p2.data import CAPTION_WORDS, make_scene_set
from p2.engine import fit
from p2.model import load_captioner
from p2.tokenizer import CaptionTokenizer
from p2.train import parse_args
import p2.engine
from tests.conftest import TEST_SEED

# a very small captioner; the images are still resized to CATR's 299 pixels
TINY = ["--config", "small", "--hidden-dim", "32", "--nheads", "2", "--enc-layers", "1",
        "--dec-layers", "1", "--dim-feedforward", "64"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("p2_scenes"))


def make_scenes(root):
    make_scene_set(root / "train", 8, seed=1, size=(64, 32))
    make_scene_set(root / "val", 4, seed=2, start_id=100, size=(64, 32))
    return root


def train_args(scenes, out, *extra, architecture=TINY):
    return parse_args([
        "--train-json", str(scenes / "train" / "captions.json"),
        "--train-dir", str(scenes / "train" / "images"),
        "--val-json", str(scenes / "val" / "captions.json"),
        "--val-dir", str(scenes / "val" / "images"), "--out", str(out), *architecture,
        "--epochs", "2", "--batch-size", "4", "--workers", "0", "--max-len", "12",
        "--lr", "2e-3", "--lr-backbone", "1e-4", "--device", "cpu", "--seed", str(TEST_SEED),
        *extra])


@pytest.fixture(scope="module")
def straight_run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("p2_run")
    fit(train_args(scenes, out))  # CATR's augmentation and dropout on: the RNG state matters
    return out


def test_training_lowers_the_loss_and_writes_the_run(straight_run):
    history = [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    # bench/sweep_learned.py (5 seeds x 1 and 2 threads x plain and native kernels): the second
    # epoch's loss is at most 0.81 of the first's for training, 0.66 for validation
    assert history[1]["train_loss"] < 0.95 * history[0]["train_loss"]
    assert history[1]["val_loss"] < 0.9 * history[0]["val_loss"]
    for key in ("val_bleu4", "val_cider", "val_exact", "images_per_s"):
        assert key in history[0]
    best = load_checkpoint(straight_run / "best.pt")
    assert "optimizer" not in best and best["config"]["hidden_dim"] == 32
    last = load_checkpoint(straight_run / "last.pt")
    assert last["epoch"] == 2 and len(last["rng"]) == 1


def test_resume_continues_to_the_same_result(scenes, straight_run, tmp_path, monkeypatch):
    real_epoch = p2.engine.train_one_epoch
    calls = []

    def interrupted_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(p2.engine, "train_one_epoch", interrupted_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(train_args(scenes, tmp_path))
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    monkeypatch.setattr(p2.engine, "train_one_epoch", real_epoch)
    fit(train_args(scenes, tmp_path, "--resume", str(tmp_path / "last.pt")))

    resumed = load_checkpoint(tmp_path / "last.pt")
    straight = load_checkpoint(straight_run / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 2
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6)
    assert ([h["train_loss"] for h in resumed["history"]]
            == pytest.approx([h["train_loss"] for h in straight["history"]], abs=1e-6))


def test_training_from_init_then_captioning_with_inference(scenes, straight_run, tmp_path):
    start = tmp_path / "start.pt"
    best = load_checkpoint(straight_run / "best.pt")
    save_checkpoint({"config": best["config"], "model": best["model"]}, start)
    fit(train_args(scenes, tmp_path / "run", "--init", str(start), "--epochs", "1",
                   architecture=[]))
    model, config = load_captioner(tmp_path / "run" / "best.pt")
    assert config == best["config"]
    # with nothing learnt (learning rates 0) the run ends with exactly the weights it started from
    fit(train_args(scenes, tmp_path / "still", "--init", str(start), "--epochs", "1", "--lr", "0",
                   "--lr-backbone", "0", architecture=[]))
    still = load_checkpoint(tmp_path / "still" / "last.pt")["model"]
    started, _ = load_captioner(start)
    for name, param in started.named_parameters():  # batch norm's running statistics move
        torch.testing.assert_close(still[name], param.detach(), rtol=0, atol=0)
    out = tmp_path / "captions.jsonl"
    inference.main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--images",
                    str(scenes / "val" / "images"), "--out", str(out), "--max-len", "12",
                    "--device", "cpu"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and all(line["tokens"][0] == 101 for line in lines)


def test_init_with_architecture_options_or_a_foreign_state_dict_is_refused(scenes, straight_run,
                                                                           tmp_path):
    with pytest.raises(UserError, match="fixes the architecture"):
        fit(train_args(scenes, tmp_path, "--init", str(straight_run / "best.pt")))
    # a bare {'model': ...} carries no configuration, so it must be CATR's own
    bare = tmp_path / "bare.pth"
    save_checkpoint({"model": load_checkpoint(straight_run / "best.pt")["model"]}, bare)
    with pytest.raises(UserError, match="not a CATR checkpoint"):
        fit(train_args(scenes, tmp_path, "--init", str(bare), architecture=[]))


def test_output_vocab_of_the_captions_is_stored_and_val_words_beyond_it_warned(scenes, tmp_path,
                                                                               capsys):
    content = json.loads((scenes / "val" / "captions.json").read_text())
    content["annotations"][0]["caption"] = "a purple circle"
    val_json = tmp_path / "val.json"
    val_json.write_text(json.dumps(content))
    fit(train_args(scenes, tmp_path / "run", "--output-vocab", "captions", "--epochs", "1",
                   "--val-json", str(val_json)))
    tokenizer = CaptionTokenizer()
    config = load_checkpoint(tmp_path / "run" / "best.pt")["config"]
    said = set(tokenizer.pieces(config["output_tokens"]))
    assert "<end>" in said and "purple" not in said
    assert said - {"<end>"} <= set(CAPTION_WORDS)
    assert f"{val_json}: 1 word pieces" in capsys.readouterr().out
    history = load_checkpoint(tmp_path / "run" / "last.pt")["history"]
    assert math.isfinite(history[0]["val_loss"])


def test_training_captions_a_restricted_model_cannot_say_are_refused(scenes, tmp_path):
    fit(train_args(scenes, tmp_path / "run", "--output-vocab", "captions", "--epochs", "1"))
    content = json.loads((scenes / "train" / "captions.json").read_text())
    content["annotations"][0]["caption"] = "a purple circle"
    train_json = tmp_path / "train.json"
    train_json.write_text(json.dumps(content))
    start = ["--init", str(tmp_path / "run" / "best.pt"), "--train-json", str(train_json)]
    with pytest.raises(UserError, match=f"{train_json}: 1 word pieces .* purple"):
        fit(train_args(scenes, tmp_path / "again", *start, architecture=[]))
    fit(train_args(scenes, tmp_path / "again", *start, "--output-vocab", "captions",
                   "--epochs", "1", architecture=[]))
    history = load_checkpoint(tmp_path / "again" / "last.pt")["history"]
    assert math.isfinite(history[0]["train_loss"])
    with pytest.raises(UserError, match="another output vocabulary"):
        fit(train_args(scenes, tmp_path / "again", *start, "--output-vocab", "full",
                       "--resume", str(tmp_path / "again" / "last.pt"), architecture=[]))


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--batch-size", "0"), ("--lr", "-1"),
                                         ("--nheads", "0"), ("--workers", "-1")])
def test_numbers_out_of_range_are_one_line_errors(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--train-json", str(tmp_path / "c.json"), "--train-dir", str(tmp_path),
                    "--out", str(tmp_path), flag, value])
    assert exit_info.value.code == 2
    assert f"error: argument {flag}: must be at least" in capsys.readouterr().err.splitlines()[-1]
