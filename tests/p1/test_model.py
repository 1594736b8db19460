import re

import pytest
import torch

import p1.engine
from hw3core.checkpoints import save_checkpoint
from hw3core.errors import UserError
from p1.model import (build_model, grid_size, infer_arch, load_classifier, load_weights,
                      make_arch, ppvit_to_timm, timm_to_ppvit)
from tests.conftest import save_p1_checkpoint


def test_ppvit_weights_give_the_same_logits(ppvit_file):
    reference, path = ppvit_file
    model, preprocess, classes = load_classifier(path)
    assert preprocess["image_size"] == [384, 384] and len(classes) == 1000
    assert grid_size(model) == (24, 24) and model.blocks[-1].attn.fused_attn
    x = torch.randn(2, 3, 384, 384)
    with torch.no_grad():
        expected, got = reference(x), model.eval()(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4


def test_fine_tuning_start_replaces_head_and_resamples_positions(ppvit_file):
    _, path = ppvit_file
    model = build_model(make_arch("B_16_imagenet1k", 37, (256, 192)))
    state = torch.load(path, weights_only=True)
    adapted = load_weights(model, state, path)
    assert adapted == ["new head: 1000 -> 37 classes",
                       "position table resampled: (24, 24) -> (16, 12) grid"]
    assert model.pos_embed.shape == (1, 1 + 16 * 12, 768)
    # the [CLS] row is kept as it is
    assert torch.equal(model.pos_embed[0, 0], state["positional_embedding.pos_embedding"][0, 0])
    assert model(torch.randn(1, 3, 256, 192)).shape == (1, 37)


def test_key_mapping_round_trips(ppvit_file):
    reference, _ = ppvit_file
    state = reference.state_dict()
    back = timm_to_ppvit(ppvit_to_timm(state))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_bare_timm_state_dict_loads(tmp_path):
    arch = make_arch("tiny", 5, (48, 48))
    model = build_model(arch)
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    loaded, preprocess, classes = load_classifier(tmp_path / "timm.pth")
    assert preprocess["image_size"] == [48, 48] and classes == ["0", "1", "2", "3", "4"]
    assert infer_arch(model.state_dict())["vit_kwargs"]["depth"] == 4
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), model.eval()(x))


@pytest.mark.parametrize("name,size", [("tiny", None), ("tiny", (32, 64)),
                                       ("vit_tiny_patch16_224", (64, 96))])
def test_models_build_at_small_size(name, size):
    model = build_model(make_arch(name, 3, size)).eval()
    h, w = size or (64, 64)
    assert grid_size(model) == (h // model.patch_embed.patch_size[0],
                                w // model.patch_embed.patch_size[1])
    out = model(torch.randn(2, 3, h, w))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_wrong_files_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_classifier(tmp_path / "none.pt")
    save_checkpoint({"conv.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a ViT state dict"):
        load_classifier(tmp_path / "other.pt")
    with pytest.raises(UserError, match="unknown model"):
        make_arch("resnet50", 3)
    for name in ("levit_128s", "mobilevit_xxs", "crossvit_tiny_240"):  # "vit" in name only
        with pytest.raises(UserError, match=f"{name} is not a timm VisionTransformer with a "
                                            r"\[CLS\] token"):
            make_arch(name, 3)
    with pytest.raises(UserError, match=r"--image-size 15 20 is not a whole number of tiny's 8 x 8 "
                                        r"pixel patches: use 16 24"):
        make_arch("tiny", 3, (15, 20))
    with pytest.raises(UserError, match=r"16 x 16 pixel patches: use 48 64"):
        make_arch("vit_tiny_patch16_224", 3, (33, 50))


def test_the_b16_preset_is_timms_vit_base_patch16_384():
    import timm

    torch.manual_seed(0)
    theirs = timm.create_model("vit_base_patch16_384", pretrained=False, num_classes=10).eval()
    ours = build_model(make_arch("B_16_imagenet1k", 10)).eval()
    ours.load_state_dict(theirs.state_dict())  # strict: the same keys and shapes
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_the_tiny_preset_is_as_described():
    model = build_model(make_arch("tiny", 3))
    assert (model.embed_dim, model.blocks[0].attn.num_heads, len(model.blocks)) == (128, 2, 4)
    assert model.patch_embed.patch_size == (8, 8) and grid_size(model) == (8, 8)


def test_nothing_downloads_when_building_or_loading_models(tmp_path, monkeypatch):
    import socket

    from p2.model import build_model as build_captioner, load_captioner, save_captioner
    from p2.tokenizer import CaptionTokenizer

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was opened")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in ("tiny", "vit_tiny_patch16_224"):
        build_model(make_arch(name, 3, (32, 32)))
    captioner = build_captioner(dict(backbone="resnet18", dilation=False, hidden_dim=32, nheads=2,
                                     enc_layers=1, dec_layers=1, dim_feedforward=32))
    save_captioner(captioner, tmp_path / "c.pt")
    load_captioner(tmp_path / "c.pt")
    assert CaptionTokenizer().encode("a cat")[0] == 101


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("class_names"), "is not a whole Problem 1 checkpoint: KeyError 'class_names'"),
    (lambda c: c["class_names"].pop(), "1 class names for a head of 2 classes"),
    (lambda c: c["preprocess"].pop("mean"), "is not a whole Problem 1 checkpoint: KeyError 'mean'"),
    (lambda c: c["preprocess"].update(image_size=[30, 30]), "does not fit its model's 32 x 32"),
    (lambda c: c["preprocess"].update(std=[0.5]), "does not fit its model's 32 x 32 RGB input"),
    (lambda c: c["arch"]["vit_kwargs"].update(depth=1), "its arch and model do not make a ViT"),
    (lambda c: c["arch"].update(name=None, vit_kwargs=None),
     "its arch and model do not make a ViT")])
def test_an_edited_or_incomplete_checkpoint_is_one_error_naming_it(edit, message, tmp_path):
    save_p1_checkpoint(tmp_path / "p1.pt", (32, 32), class_names=("cat", "dog"))
    checkpoint = torch.load(tmp_path / "p1.pt", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, tmp_path / "edited.pt")
    with pytest.raises(UserError, match=re.escape(message)) as raised:
        load_classifier(tmp_path / "edited.pt")
    assert str(tmp_path / "edited.pt") in str(raised.value) and "\n" not in str(raised.value)


def test_a_checkpoint_of_a_non_square_grid_starts_another_size_from_its_own_grid(tmp_path):
    from timm.layers import resample_abs_pos_embed

    saved = save_p1_checkpoint(tmp_path / "wide.pt", (24, 96))  # 3 x 12 patches of 8 pixels
    model = build_model(make_arch("tiny", 4, (48, 48)))
    p1.engine._load_pretrained(model, tmp_path / "wide.pt")
    expected = resample_abs_pos_embed(saved.pos_embed, new_size=[6, 6], old_size=[3, 12],
                                      num_prefix_tokens=1)
    assert torch.equal(model.pos_embed, expected)
    # a bare state dict does not say its grid: 3 x 10 cells are refused, not read as 5 x 5 + 5
    wider = save_p1_checkpoint(tmp_path / "wider.pt", (24, 80))
    torch.save(wider.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(UserError, match="position table of 30 cells is no square grid"):
        p1.engine._load_pretrained(model, tmp_path / "bare.pth")
