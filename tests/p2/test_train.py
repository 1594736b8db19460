"""p2/train.py on a few synthetic scenes: learning, resuming exactly, starting from a checkpoint."""
import json
import math
import os
import signal

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
from tests.conftest import TEST_SEED, assert_learned, run_entry_point, run_history
import p2.train as p2_train

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
    return parse_args(train_args_list(scenes, out, *architecture, *extra))


def train_args_list(scenes, out, *extra):
    return [
        "--train-json", str(scenes / "train" / "captions.json"),
        "--train-dir", str(scenes / "train" / "images"),
        "--val-json", str(scenes / "val" / "captions.json"),
        "--val-dir", str(scenes / "val" / "images"), "--out", str(out),
        "--epochs", "2", "--batch-size", "4", "--workers", "0", "--max-len", "12",
        "--lr", "2e-3", "--lr-backbone", "1e-4", "--device", "cpu", "--seed", str(TEST_SEED),
        *extra]


@pytest.fixture(scope="module")
def straight_run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("p2_run")
    fit(train_args(scenes, out))  # CATR's augmentation and dropout on: the RNG state matters
    return out


def test_training_lowers_the_loss_and_writes_the_run(straight_run):
    history = run_history(straight_run)
    assert [h["epoch"] for h in history] == [1, 2]
    assert_learned("p2", history)  # the second epoch's loss over the first's, train and val
    # the record P1's runs keep too (hw3core.training.train_epochs), less train_tflops
    assert set(history[0]) == {"train_loss", "images", "seconds", "val_loss", "val_bleu4",
                               "val_cider", "val_exact", "val_images", "val_examples",
                               "val_seconds", "epoch", "lr", "images_per_s", "epoch_seconds",
                               "device"}
    best = load_checkpoint(straight_run / "best.pt")
    assert "optimizer" not in best and best["config"]["hidden_dim"] == 32
    last = load_checkpoint(straight_run / "last.pt")
    assert last["epoch"] == 2 and last["in_epoch"] is None


def test_a_signal_during_validation_keeps_the_trained_epoch_and_resume_ends_the_same(
        scenes, straight_run, tmp_path, monkeypatch, capsys):
    real_evaluate = p2.engine.evaluate

    def signalled_in_the_first_evaluation(*args, **kwargs):
        monkeypatch.setattr(p2.engine, "evaluate", real_evaluate)
        os.kill(os.getpid(), signal.SIGINT)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(p2.engine, "evaluate", signalled_in_the_first_evaluation)
    argv = train_args_list(scenes, tmp_path, *TINY)
    status, _, err = run_entry_point(p2_train.main, argv, capsys)
    assert status == 128 + signal.SIGINT
    assert "stopped by SIGINT" in err and "all 2 training batches of epoch 1" in err
    cut = load_checkpoint(tmp_path / "last.pt")
    assert cut["epoch"] == 0 and cut["in_epoch"]["batches"] == 2 and cut["history"] == []
    assert run_entry_point(p2_train.main, [*argv, "--resume", tmp_path / "last.pt"], capsys)[0] == 0

    resumed = load_checkpoint(tmp_path / "last.pt")
    straight = load_checkpoint(straight_run / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 2
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6)
    assert ([h["train_loss"] for h in resumed["history"]]
            == pytest.approx([h["train_loss"] for h in straight["history"]], rel=1e-9))


COSINE = [*TINY, "--batch-size", "2", "--schedule", "cosine", "--warmup", "3", "--epochs", "1"]


@pytest.fixture(scope="module")
def cosine_run(scenes, tmp_path_factory):
    """The last.pt of an uninterrupted run with COSINE's options, for each moment of a cut."""
    out = tmp_path_factory.mktemp("p2_cosine")
    fit(parse_args(train_args_list(scenes, out, *COSINE)))
    return load_checkpoint(out / "last.pt")


@pytest.mark.parametrize("moment", ["as a step begins", "after its forward pass"])
def test_a_signal_mid_epoch_with_the_cosine_schedule_resumes_exactly(
        moment, scenes, cosine_run, tmp_path, monkeypatch, capsys):
    from tests.p1.test_train import signal_at

    # data workers: tests/p1/test_train.py's mid-epoch test
    argv = train_args_list(scenes, tmp_path / "cut", *COSINE)
    if moment == "as a step begins":
        signal_at(monkeypatch, epoch=0, step=2)
    else:  # the small config's batch norm has counted the abandoned step's batch by then
        real_loss, calls = p2.engine.caption_loss, []

        def loss_then_signal(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_loss(*args, **kwargs)
        monkeypatch.setattr(p2.engine, "caption_loss", loss_then_signal)
    assert run_entry_point(p2_train.main, argv, capsys)[0] == 128 + signal.SIGTERM
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["in_epoch"]["batches"] == 2
    monkeypatch.undo()
    assert run_entry_point(p2_train.main, [*argv, "--resume", tmp_path / "cut" / "last.pt"],
                           capsys)[0] == 0
    resumed, expected = load_checkpoint(tmp_path / "cut" / "last.pt"), cosine_run
    for key, value in expected["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6)
    assert resumed["scheduler"] == expected["scheduler"]
    assert [h["lr"] for h in resumed["history"]] == [h["lr"] for h in expected["history"]]


def test_captions_cut_by_max_len_are_counted_in_a_warning(scenes, tmp_path, capsys):
    argv = train_args_list(scenes, tmp_path / "run", *TINY, "--epochs", "1")
    argv[argv.index("--max-len") + 1] = "4"  # [CLS] and 3 pieces: every scene caption is longer
    status, _, err = run_entry_point(p2_train.main, argv, capsys)
    assert status == 0, err
    captions = json.loads((scenes / "train" / "captions.json").read_text())["annotations"]
    assert (f"warning: {scenes / 'train' / 'captions.json'}: {len(captions)} of {len(captions)} "
            "captions are longer than --max-len 4 positions and were cut, losing their end; "
            "raise --max-len to train on them whole") in err
    # the longest take 19 positions: at --max-len 19 they fit, and nothing is said
    argv[argv.index("--max-len") + 1], argv[argv.index("--out") + 1] = "19", tmp_path / "whole"
    assert "were cut" not in run_entry_point(p2_train.main, argv, capsys)[2]


def test_training_from_init_then_captioning_with_inference(scenes, straight_run, tmp_path):
    start = tmp_path / "start.pt"
    best = load_checkpoint(straight_run / "best.pt")
    save_checkpoint({"config": best["config"], "model": best["model"]}, start)
    fit(train_args(scenes, tmp_path / "run", "--init", str(start), "--epochs", "1",
                   "--dropout", "0.05", architecture=[]))
    model, config = load_captioner(tmp_path / "run" / "best.pt")
    assert config == {**best["config"], "dropout": 0.05}  # the one option --init leaves open
    # --lr-backbone 0 freezes the backbone (a rate of 0, not the default): the rest learns
    fit(train_args(scenes, tmp_path / "still", "--init", str(start), "--epochs", "1", "--lr",
                   "1e-3", "--lr-backbone", "0", architecture=[]))
    still = load_checkpoint(tmp_path / "still" / "last.pt")["model"]
    started, _ = load_captioner(start)
    moved = set()
    for name, param in started.named_parameters():  # batch norm's running statistics move
        if name.startswith("backbone."):
            torch.testing.assert_close(still[name], param.detach(), rtol=0, atol=0)
        elif not torch.equal(still[name], param.detach()):
            moved.add(name)
    assert moved and best["config"]["dropout"] != 0.05
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


@pytest.mark.parametrize("max_len", ["1", "129"])
def test_a_max_len_beyond_the_position_table_is_refused_before_training(scenes, tmp_path,
                                                                        max_len):
    # the check that inference and visualize make too (p2.decode.check_decoding_options)
    with pytest.raises(UserError, match=f"--max-len must be between 2 and 128, not {max_len}"):
        fit(train_args(scenes, tmp_path, "--max-len", max_len))
    assert not (tmp_path / "last.pt").exists()


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
    last = tmp_path / "again" / "last.pt"
    with pytest.raises(UserError, match=f"{last} was run with --output-vocab captions; this "
                                        "command gives --output-vocab full: resume it with"):
        fit(train_args(scenes, tmp_path / "again", *start, "--output-vocab", "full",
                       "--epochs", "1", "--resume", str(last), architecture=[]))
    # the same option on captions that moved and changed: another vocabulary
    checkpoint = load_checkpoint(last)
    checkpoint.update(epoch=0, history=[])
    torch.save(checkpoint, tmp_path / "cut.pt")
    with pytest.raises(UserError, match="that run has another output vocabulary"):
        fit(train_args(scenes, tmp_path / "third", *start[:2], "--output-vocab", "captions",
                       "--epochs", "1", "--resume", str(tmp_path / "cut.pt"), architecture=[]))


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--batch-size", "0"), ("--lr", "-1"),
                                         ("--nheads", "0"), ("--workers", "-1")])
def test_numbers_out_of_range_are_one_line_errors(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--train-json", str(tmp_path / "c.json"), "--train-dir", str(tmp_path),
                    "--out", str(tmp_path), flag, value])
    assert exit_info.value.code == 2
    assert f"error: argument {flag}: must be at least" in capsys.readouterr().err.splitlines()[-1]


def test_catrs_recipe_is_the_default_and_small_is_as_described(tmp_path):
    from p2.data import RightAngleRotation, train_transform
    from p2.engine import build_optimizer, config_from_args
    from p2.model import build_model

    required = ["--train-json", str(tmp_path / "c.json"), "--train-dir", str(tmp_path),
                "--out", str(tmp_path)]
    # resumed, the options left out are the run's (open_run), not the defaults; where and how it
    # runs keeps its defaults
    resumed = parse_args(required + ["--resume", str(tmp_path / "last.pt")])
    assert (resumed.lr, resumed.epochs, resumed.rotate, resumed.config) == (None,) * 4
    assert (resumed.device, resumed.workers) == ("auto", None)
    args = parse_args([*required, "--init", str(tmp_path / "catr_v3.pth")])  # read by fit
    assert (args.lr, args.lr_backbone, args.weight_decay, args.clip_grad) == (1e-4, 1e-5, 1e-4, 0.1)
    assert (args.schedule, args.lr_drop, args.epochs, args.batch_size) == ("step", 20, 30, 32)
    assert (args.rotate, args.color_jitter, args.hflip) == (True, True, False)
    assert (args.max_len, args.warmup) == (128, 50)  # CATR's caption buffer; --help's warm-up
    steps = [type(step).__name__ for step in train_transform(299).transforms]
    assert "RightAngleRotation" in steps and "ColorJitter" in steps
    assert "RandomHorizontalFlip" not in steps
    plain = train_transform(299, rotate=False, color_jitter=False, hflip=True).transforms
    assert not any(isinstance(step, RightAngleRotation) for step in plain)
    assert type(plain[-2]).__name__ == "RandomHorizontalFlip"

    small = config_from_args(parse_args([*required, "--config", "small"]))
    assert {k: small[k] for k in ("backbone", "backbone_layer", "backbone_norm", "input_size",
                                  "hidden_dim", "enc_layers", "dec_layers")} == dict(
        backbone="resnet18", backbone_layer="layer2", backbone_norm="batch", input_size=128,
        hidden_dim=128, enc_layers=2, dec_layers=3)
    model = build_model(small)
    assert model.stride == 8
    optimizer = build_optimizer(model, 1e-4, 0.0, 1e-4)  # --lr-backbone 0 freezes the backbone
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 1
    frozen = [p for name, p in model.named_parameters() if name.startswith("backbone.")]
    assert frozen and not any(p.requires_grad for p in frozen)
    in_optimizer = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert not any(id(p) in in_optimizer for p in frozen)


def test_best_pt_is_the_best_cider_epoch_with_curves_and_the_options_given(scenes, tmp_path):
    options = ["--config", "small", "--backbone", "resnet34", "--no-dilation", "--backbone-layer",
               "layer3", "--backbone-norm", "frozen", "--input-size", "64", "--hidden-dim", "32",
               "--nheads", "2", "--enc-layers", "1", "--dec-layers", "1", "--dim-feedforward",
               "32", "--dropout", "0.2"]
    fit(train_args(scenes, tmp_path, "--batch-size", "8", architecture=options))
    config = load_checkpoint(tmp_path / "best.pt")["config"]
    assert {k: config[k] for k in ("backbone", "dilation", "backbone_layer", "backbone_norm",
                                   "input_size", "hidden_dim", "dropout")} == dict(
        backbone="resnet34", dilation=False, backbone_layer="layer3", backbone_norm="frozen",
        input_size=64, hidden_dim=32, dropout=0.2)
    history = load_checkpoint(tmp_path / "last.pt")["history"]
    ciders = [h["val_cider"] for h in history]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1 + ciders.index(max(ciders))
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_scenes_json_holds_each_object_left_to_right(tmp_path):
    returned = make_scene_set(tmp_path, 3, seed=4)
    written = json.loads((tmp_path / "scenes.json").read_text())
    assert written == returned and len(written) == 3
    for objects in written.values():
        assert [sorted(o) for o in objects] == [["box", "color", "shape"]] * len(objects)
        assert [o["box"][0] for o in objects] == sorted(o["box"][0] for o in objects)
    assert not (tmp_path / "masks").exists()  # only when asked


def test_default_checkpoints_are_those_hw3_download_sh_writes(monkeypatch):
    import importlib

    import p1.inference

    from tests.conftest import ROOT

    monkeypatch.delenv("HW3_P1_CKPT", raising=False)
    monkeypatch.delenv("HW3_P2_CKPT", raising=False)
    assert inference.parse_args(["--images", "x", "--out", "y"]).checkpoint == str(
        ROOT / "checkpoints" / "catr_v3.pth")
    assert importlib.reload(p1.inference).parse_args(["--images", "x", "--out", "y"]).checkpoint \
        == str(ROOT / "checkpoints" / "p1_vit.pt")


def test_torchrun_two_processes_split_the_images_and_gather_every_caption(scenes, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT, script_env

    # no dropout, frozen batch norm and SGD-like exactness aside, two ranks of 4 captions a step
    # train as one process of 8
    options = [*TINY, "--backbone-norm", "frozen", "--dropout", "0", "--epochs", "1",
               "--lr-backbone", "0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "p2" / "train.py"),
           *[str(a) for a in train_args_list(scenes, tmp_path / "two", *options,
                                             "--batch-size", "4")]]
    run = subprocess.run(cmd, env=script_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("epoch 1:") == 1  # rank 0 alone reports
    two = load_checkpoint(tmp_path / "two" / "last.pt")
    (metrics,) = two["history"]
    # every training caption once, every validation image captioned once and gathered
    assert metrics["images"] == 8 and metrics["val_images"] == 4
    fit(parse_args(train_args_list(scenes, tmp_path / "one", *options, "--batch-size", "8")))
    one = load_checkpoint(tmp_path / "one" / "last.pt")
    assert metrics["train_loss"] == pytest.approx(one["history"][0]["train_loss"], rel=1e-5)
    # AdamW's first step is about lr times the gradient's sign, so parameters whose gradient is
    # rounding noise may step either way; the rest must agree
    for key, value in one["model"].items():
        close = torch.isclose(two["model"][key], value, rtol=1e-4, atol=1e-5)
        assert close.float().mean() > 0.9, key
        assert (two["model"][key] - value).abs().max() <= 2.01 * 2e-3, key


def test_torchrun_processes_stay_in_lockstep_when_one_has_only_unreadable_images(scenes,
                                                                                 tmp_path):
    import shutil
    import subprocess
    import sys

    from tests.conftest import ROOT, script_env

    # one caption a step per process, and one image that cannot be read: at that step one
    # process has nothing to train on, and must still join the others' gradient all-reduce
    images = tmp_path / "images"
    shutil.copytree(scenes / "train" / "images", images)
    (images / "broken.png").write_bytes(b"not a png")
    content = json.loads((scenes / "train" / "captions.json").read_text())
    content["images"].append({"id": 999, "file_name": "broken.png"})
    content["annotations"].append({"id": 999, "image_id": 999, "caption": "a red circle"})
    (tmp_path / "captions.json").write_text(json.dumps(content))
    argv = ["--train-json", tmp_path / "captions.json", "--train-dir", images, "--out",
            tmp_path / "run", *TINY, "--epochs", "1", "--batch-size", "1", "--workers", "0",
            "--max-len", "12", "--device", "cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "p2" / "train.py"), *map(str, argv)]
    run = subprocess.run(cmd, env=script_env(OMP_NUM_THREADS="1"), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "broken.png" in run.stderr
    (metrics,) = load_checkpoint(tmp_path / "run" / "last.pt")["history"]
    assert metrics["images"] == 8  # the readable ones, each once (the sampler pads to 10)


def test_the_loss_scores_each_next_token_and_ignores_the_padding():
    from p2.engine import caption_loss
    from p2.tokenizer import PAD_ID

    tokens = torch.tensor([[101, 7, 8, 102], [101, 9, 102, PAD_ID]])
    # certain of every next token (positions 0..2 predict tokens 1..3), wrong at the padding
    logits = torch.full((2, 3, 200), -30.0)
    for row, ids in enumerate(tokens.tolist()):
        for position, token in enumerate(ids[1:]):
            logits[row, position, PAD_ID + 1 if token == PAD_ID else token] = 30.0
    assert caption_loss(logits, tokens) < 1e-6
    logits[0, 1] = 0.0  # one position without an opinion: log(200) nats over 5 tokens
    assert caption_loss(logits, tokens).item() == pytest.approx(math.log(200) / 5, rel=1e-4)


def test_validation_scores_a_caption_against_every_reference_of_its_image():
    from p2.data import preprocess, tokenize_captions
    from p2.decode import caption_images
    from p2.engine import evaluate
    from tests.p2.p2_samples import sample_photos, small_model

    model, tokenizer = small_model(), CaptionTokenizer()
    image = preprocess(sample_photos()["wide"], 299)
    (said,) = caption_images(model, [image], max_len=6)
    said = tokenizer.decode(said.tokens)
    samples = [("wide.jpg", ["a cat lies on a sofa.", said])]
    scores = evaluate(model, [[(image, 0)]], samples, tokenize_captions(samples, tokenizer, 6),
                      tokenizer, torch.device("cpu"), max_len=6)
    assert scores["val_examples"] == [said] and scores["val_exact"] == 1.0


def test_the_epoch_lines_example_caption_is_cut_to_a_line():
    from p2.engine import _shortened

    assert _shortened("A red circle.") == "A red circle."
    long = "a jaime elder connection " * 30  # what an untrained model says
    assert len(_shortened(long)) <= 80 and _shortened(long).endswith("...")
