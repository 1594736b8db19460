"""The attention maps and position similarity of p1.attention, checked against independent code."""
import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from p1.attention import attention_rollout, cls_attention, position_similarity
from p1.model import build_model, load_classifier, make_arch


def randomise(model, std, seed=0):
    """Every parameter redrawn, so attention is far from uniform and every weight matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model.eval()


def tiny(image_size=(64, 96), seed=0):
    return randomise(build_model(make_arch("tiny", 5, image_size)), std=0.3, seed=seed)


def explicit_attention(block, x):
    """softmax(q k^T / sqrt(d)) of one timm block, written out from its weights with F."""
    attn = block.attn
    batch, tokens, dim = x.shape
    heads = attn.num_heads
    head_dim = dim // heads
    normed = F.layer_norm(x, (dim,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    qkv = F.linear(normed, attn.qkv.weight, attn.qkv.bias)
    q, k, _ = qkv.split(dim, dim=-1)
    q = q.reshape(batch, tokens, heads, head_dim).transpose(1, 2)
    k = k.reshape(batch, tokens, heads, head_dim).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)


def explicit_attentions(model, images):
    """Every block's attention matrix, following the residual stream by hand."""
    x = model._pos_embed(model.patch_embed(images))
    matrices = []
    for block in model.blocks:
        matrices.append(explicit_attention(block, x))
        x = block(x)
    return matrices


def cls_row(matrix, prefix, grid):
    return matrix[..., 0, prefix:].reshape(*matrix.shape[:-2], *grid)


def test_cls_map_is_the_explicit_softmax_of_the_last_block_on_a_non_square_grid():
    model = tiny((64, 96))
    images = torch.randn(3, 3, 64, 96)
    maps = cls_attention(model, images)
    with torch.no_grad():
        expected = cls_row(explicit_attentions(model, images)[-1], 1, (8, 12))
    assert maps.shape == (3, model.blocks[-1].attn.num_heads, 8, 12)
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=1e-5)
    # Far from uniform, so a wrong row, column or head order could not pass by accident.
    assert maps.amax() > 4 / (8 * 12)


def test_any_layer_and_negative_indices():
    model = tiny((64, 64))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = explicit_attentions(model, images)
    for layer in range(len(model.blocks)):
        torch.testing.assert_close(cls_attention(model, images, layer),
                                   cls_row(expected[layer], 1, (8, 8)), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cls_attention(model, images, -2), cls_attention(model, images, 2))
    with pytest.raises(ValueError, match="blocks"):
        cls_attention(model, images, len(model.blocks))


def test_logits_with_maps_requested_equal_the_plain_forward():
    model = tiny((64, 96))
    images = torch.randn(4, 3, 64, 96)
    with torch.no_grad():
        plain = model(images)
        for layer in range(len(model.blocks)):
            maps, logits = cls_attention(model, images, layer, with_logits=True)
            assert torch.equal(logits, plain)
            assert maps.shape == (4, model.blocks[layer].attn.num_heads, 8, 12)  # 8-pixel patches
        _, rollout_logits = attention_rollout(model, images, with_logits=True)
    assert torch.equal(rollout_logits, plain)


def test_each_image_of_a_batch_gets_its_own_map():
    model = tiny((64, 96))
    images = torch.randn(3, 3, 64, 96)
    together = cls_attention(model, images)
    for i in range(3):
        torch.testing.assert_close(cls_attention(model, images[i:i + 1])[0], together[i],
                                   atol=1e-6, rtol=1e-5)


def test_rollout_matches_a_straightforward_implementation_on_two_layers():
    model = randomise(VisionTransformer(img_size=(32, 48), patch_size=8, embed_dim=32, depth=2,
                                        num_heads=4, num_classes=3), std=0.3)
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        first, second = explicit_attentions(model, images)
    tokens = first.shape[-1]
    expected = torch.empty(2, 4, 6)
    for b in range(2):
        layers = []
        for matrix in (first[b], second[b]):
            mixed = matrix.mean(0) + torch.eye(tokens)
            layers.append(mixed / mixed.sum(1, keepdim=True))
        product = layers[1] @ layers[0]
        expected[b] = product[0, 1:].reshape(4, 6)
    torch.testing.assert_close(attention_rollout(model, images), expected, atol=1e-6, rtol=1e-5)


def test_register_tokens_are_left_out_of_the_keys():
    model = randomise(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                        num_heads=2, num_classes=3, reg_tokens=2), std=0.3)
    assert model.num_prefix_tokens == 3
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = cls_row(explicit_attentions(model, images)[-1], 3, (4, 4))
    torch.testing.assert_close(cls_attention(model, images), expected, atol=1e-6, rtol=1e-5)
    assert attention_rollout(model, images).shape == (2, 4, 4)
    assert position_similarity(model).shape == (4, 4, 4, 4)


def test_position_similarity_tiles_are_cosine_similarities():
    model = tiny((64, 96))
    similarity = position_similarity(model)
    assert similarity.shape == (8, 12, 8, 12)
    table = model.pos_embed[0, 1:].detach()  # row 0 belongs to [CLS]
    for r, c in [(0, 0), (3, 7), (7, 11), (5, 2)]:
        patch = table[r * 12 + c]
        expected = torch.tensor([[F.cosine_similarity(patch, table[i * 12 + j], dim=0).item()
                                  for j in range(12)] for i in range(8)])
        torch.testing.assert_close(similarity[r, c], expected, atol=1e-5, rtol=1e-5)
        assert similarity[r, c, r, c] == pytest.approx(1.0, abs=1e-5)


def test_non_square_shapes():
    model = tiny((64, 96))
    images = torch.randn(2, 3, 64, 96)
    heads = model.blocks[-1].attn.num_heads
    assert cls_attention(model, images, 0).shape == (2, heads, 8, 12)
    assert attention_rollout(model, images).shape == (2, 8, 12)
    assert position_similarity(model).shape == (8, 12, 8, 12)


def test_matches_pytorch_pretrained_vit_scores(ppvit_file):
    """A B_16_imagenet1k state dict loaded via load_classifier gives the map that the original
    package keeps in blocks[-1].attn.scores (mean over heads, row 0, columns 1:)."""
    reference, path = ppvit_file
    model, preprocess, _ = load_classifier(path)
    model.eval()
    assert preprocess["image_size"] == [384, 384]

    images = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        reference_logits = reference(images)
    expected = reference.transformer.blocks[-1].attn.scores.mean(1)[:, 0, 1:].reshape(1, 24, 24)
    maps, logits = cls_attention(model, images, with_logits=True)
    assert (maps.mean(1) - expected).abs().max() < 1e-5
    assert expected.max() > 5 * expected.mean()
    torch.testing.assert_close(logits, reference_logits, atol=1e-4, rtol=1e-4)
