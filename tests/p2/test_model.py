"""The full-size CATR: state-dict compatibility, loading released-format files, real photos."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hw3core.checkpoints import load_checkpoint
from hw3core.errors import UserError
from p2.data import pad_batch, preprocess
from p2.decode import caption_images, encode_images, reference_greedy
from p2.model import build_model, load_captioner, save_captioner
from p2.tokenizer import END_ID, START_ID
from tests.p2.p2_samples import sample_photos, small_model

MANIFEST = Path(__file__).with_name("data") / "catr_v3_state_dict.json"


@pytest.fixture(scope="module")
def released_file(tmp_path_factory):
    """A random full-size CATR saved as the released checkpoints are: {'model': state_dict}."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("catr") / "catr_random.pth"
    torch.save({"model": build_model().state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def catr(released_file):
    model, config = load_captioner(released_file)
    return model


def test_state_dict_matches_released_manifest(catr):
    manifest = json.loads(MANIFEST.read_text())
    state = catr.state_dict()
    assert list(state) == list(manifest)
    assert {k: list(v.shape) for k, v in state.items()} == manifest
    assert sum(v.numel() for v in state.values()) == 84_392_954
    bn = catr.backbone[0].body.bn1
    assert bn.eps == 1e-5 and not any("num_batches_tracked" in k for k in state)


def test_released_format_and_bare_state_dict_load_strictly(catr, released_file, tmp_path):
    state = torch.load(released_file, weights_only=True)["model"]
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    model, config = load_captioner(bare)
    assert config["backbone"] == "resnet101" and config["dec_layers"] == 6
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_captions_wide_tall_square_photos_with_own_grids(catr):
    images = [preprocess(photo, 299) for photo in sample_photos().values()]
    results = caption_images(catr, images, max_len=4, attention_layer=-1)
    for image, result in zip(images, results):
        grid = tuple(math.ceil(size / 16) for size in image.shape[1:])
        assert result.tokens[0] == START_ID and len(result.tokens) <= 4
        assert result.attention.shape == (len(result.tokens) - 1, *grid)
        np.testing.assert_allclose(result.attention.sum((1, 2)), 1.0, atol=1e-5)
    assert [r.attention.shape[1:] for r in results] == [(5, 19), (19, 6), (19, 19)]


def test_fast_decoding_matches_catr_loop_on_full_model(catr):
    image = preprocess(sample_photos()["wide"], 299)
    tokens, _ = reference_greedy(catr, image, max_len=4)
    assert caption_images(catr, [image], max_len=4)[0].tokens == tokens


def test_project_checkpoint_keeps_its_config(tmp_path):
    model = small_model()
    path = tmp_path / "small.pt"
    save_captioner(model, path)
    loaded, config = load_captioner(path)
    assert config == model.config and loaded.stride == 32
    assert {"config", "model"} <= set(load_checkpoint(path))  # as the README gives it


@pytest.mark.parametrize("content", ["text", "vit", "missing", "shape"])
def test_wrong_checkpoints_are_one_line_errors(tmp_path, content, released_file):
    path = tmp_path / "wrong.pth"
    if content == "text":
        path.write_text("not a checkpoint\n")
    elif content == "vit":
        torch.save({"cls_token": torch.zeros(1, 1, 8), "pos_embed": torch.zeros(1, 5, 8)}, path)
    elif content == "shape":  # CATR's keys, one tensor cut short
        checkpoint = torch.load(released_file, weights_only=True)
        checkpoint["model"]["mlp.layers.2.bias"] = checkpoint["model"]["mlp.layers.2.bias"][:-1]
        torch.save(checkpoint, path)
    with pytest.raises(UserError) as err:
        load_captioner(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    if content == "shape":
        assert "1 tensor(s) of the wrong shape, e.g. mlp.layers.2.bias: (30521,)" in str(err.value)


def test_unknown_config_is_refused():
    with pytest.raises(UserError):
        build_model({"hidden": 3})
    with pytest.raises(UserError):
        build_model({"backbone": "resnet18", "dilation": True})


@pytest.mark.parametrize("layer,stride,channels", [("layer2", 8, 128), ("layer3", 16, 256)])
def test_from_scratch_backbone_options_give_finer_grids_on_small_inputs(tmp_path, layer, stride,
                                                                        channels):
    config = dict(backbone="resnet18", dilation=False, backbone_layer=layer,
                  backbone_norm="batch", input_size=128, hidden_dim=64, nheads=4, enc_layers=1,
                  dec_layers=1, dim_feedforward=128)
    model = build_model(config)
    assert model.stride == stride and model.backbone[0].num_channels == channels
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    image = preprocess(sample_photos()["wide"], model.config["input_size"])
    assert max(image.shape[1:]) == 128
    (result,) = caption_images(model, [image], max_len=4, attention_layer=-1)
    assert result.attention.shape[1:] == (math.ceil(image.shape[1] / stride),
                                          math.ceil(image.shape[2] / stride))
    save_captioner(model, tmp_path / "small.pt")  # batch-norm statistics round-trip too
    loaded, loaded_config = load_captioner(tmp_path / "small.pt")
    assert loaded_config == model.config
    assert caption_images(loaded, [image], max_len=4)[0].tokens == result.tokens


@pytest.mark.parametrize("overrides,message", [
    (dict(backbone_layer="layer3", dilation=True), "dilation applies to layer4"),
    (dict(backbone_layer="layer1"), "layer2, layer3, layer4"),
    (dict(backbone_norm="group"), "frozen or batch")])
def test_impossible_backbone_choices_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        build_model(overrides)


def test_output_tokens_restrict_what_the_head_can_say(tmp_path):
    full = small_model()
    allowed = [END_ID, 1037, 2417, 4418]  # [SEP], a, red, circle
    restricted = build_model({**full.config, "output_tokens": allowed})
    restricted.load_state_dict(full.state_dict())  # the state dict is still CATR's, every row
    image = preprocess(sample_photos()["wide"], 128)
    encoded_full, encoded = (encode_images(m, [image]) for m in (full, restricted))
    tokens = torch.tensor([[START_ID, 1037, 2417]])
    reference = full.decode(full.start_decoding(encoded_full), tokens)[0]
    logits = restricted.decode(restricted.start_decoding(encoded), tokens)[0]
    torch.testing.assert_close(logits[..., allowed], reference[..., allowed])
    others = torch.ones(full.config["vocab_size"], dtype=torch.bool)
    others[allowed] = False
    assert torch.isneginf(logits[..., others]).all()
    (result,) = caption_images(restricted, [image], max_len=6)
    assert set(result.tokens[1:]) <= set(allowed)
    save_captioner(restricted, tmp_path / "restricted.pt")
    loaded, config = load_captioner(tmp_path / "restricted.pt")
    assert config["output_tokens"] == allowed
    assert caption_images(loaded, [image], max_len=6)[0].tokens == result.tokens


def test_restricted_head_beams_wider_than_its_words_say_only_its_words():
    # 3 words besides [SEP], which is made unlikely: beams of 4 and 8 have more slots than there
    # are sayable continuations, so -inf candidates fill the rest and must never be the answer
    full = small_model(end_bias=-50.0)
    allowed = [END_ID, 1037, 2417, 4418]
    restricted = build_model({**full.config, "output_tokens": allowed})
    restricted.load_state_dict(full.state_dict())
    images = [preprocess(photo, 128) for photo in sample_photos().values()]
    for beam in (4, 8):
        for result in caption_images(restricted, images, max_len=6, beam=beam):
            assert len(result.tokens) == 6 and set(result.tokens[1:]) <= set(allowed)


@pytest.mark.parametrize("tokens", [[], [102, 101], [5, 5], [30522], "102"])
def test_impossible_output_tokens_are_refused(tokens):
    with pytest.raises(UserError, match="output_tokens"):
        build_model({"output_tokens": tokens})


def test_a_restricted_model_keeps_only_its_words_rows_and_saves_catrs_shapes():
    full = small_model()
    allowed = [END_ID, 1037, 2417, 4418]
    restricted = build_model({**full.config, "output_tokens": allowed})
    restricted.load_state_dict(full.state_dict())
    # training updates the rows of 4 head words and 6 read words ([PAD], [CLS], the 4), not
    # 2 x 30,522
    assert restricted.mlp.layers[-1].weight.shape[0] == 4
    assert restricted.transformer.embeddings.word_embeddings.weight.shape[0] == 6
    saved = restricted.state_dict()
    for key, value in full.state_dict().items():
        assert saved[key].shape == value.shape, key
    vocabulary_rows = ("mlp.layers.2.weight", "mlp.layers.2.bias",
                       "transformer.embeddings.word_embeddings.weight")
    read = [0, START_ID, *allowed]
    for key in vocabulary_rows:
        kept = allowed if key.startswith("mlp") else read
        torch.testing.assert_close(saved[key][kept], full.state_dict()[key][kept], rtol=0, atol=0)
        others = torch.ones(len(saved[key]), dtype=torch.bool)
        others[kept] = False
        assert not saved[key][others].any()  # words it cannot say or read are saved as zeros


def test_a_restricted_model_reads_an_unknown_word_as_padding():
    full = small_model()
    restricted = build_model({**full.config, "output_tokens": [END_ID, 1037]})
    restricted.load_state_dict(full.state_dict())
    embeddings = restricted.transformer.embeddings.eval()
    positions = torch.arange(2)
    torch.testing.assert_close(embeddings(torch.tensor([[1037, 9999]]), positions)[0, 1],
                               embeddings(torch.tensor([[1037, 0]]), positions)[0, 1])


def test_the_training_loss_over_a_restricted_heads_words_equals_it_over_the_vocabulary():
    from p2.engine import caption_loss
    full = small_model()
    allowed = [END_ID, 1037, 2417, 4418]
    restricted = build_model({**full.config, "output_tokens": allowed}).train()
    restricted.load_state_dict(full.state_dict())
    image = preprocess(sample_photos()["wide"], 128)
    images, pixel_mask = pad_batch([image, image])
    tokens = torch.tensor([[START_ID, 1037, 2417, 4418, END_ID], [START_ID, 2417, END_ID, 0, 0]])
    padding = tokens == 0
    torch.manual_seed(0)
    vocabulary = caption_loss(restricted(images, pixel_mask, tokens[:, :-1], padding[:, :-1]),
                              tokens)
    torch.manual_seed(0)
    scores = restricted(images, pixel_mask, tokens[:, :-1], padding[:, :-1], restricted=True)
    assert scores.shape[-1] == 4
    torch.testing.assert_close(caption_loss(scores, tokens, output_tokens=restricted.output_tokens),
                               vocabulary)
