"""Decoding with a small random CATR: fast paths against CATR's own loop, batching, beams, maps."""
import math

import numpy as np
import pytest
import torch

from hw3core.errors import UserError
from p2.decode import caption_images, pad_batch, preprocess, reference_greedy, resize_for_catr
from p2.model import EncodedImages
from p2.tokenizer import END_ID, START_ID
from tests.p2.p2_samples import sample_photos, small_model


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def images():
    return [preprocess(photo) for photo in sample_photos().values()]


def test_resize_keeps_aspect_and_longer_side_299():
    photos = sample_photos()
    assert resize_for_catr(photos["wide"]).size == (299, int(120 * 299 / 451))
    assert resize_for_catr(photos["tall"]).size == (int(150 * 299 / 512), 299)
    assert resize_for_catr(photos["square"]).size == (299, 299)
    x = preprocess(photos["square"])
    assert x.shape == (3, 299, 299) and -1 <= x.min() < x.max() <= 1


def test_pad_batch_pads_bottom_right_with_mask():
    a, b = torch.ones(3, 4, 6), torch.ones(3, 5, 2)
    batch, mask = pad_batch([a, b])
    assert batch.shape == (2, 3, 5, 6) and mask.shape == (2, 5, 6)
    assert not mask[0, :4].any() and mask[0, 4].all()
    assert not mask[1, :, :2].any() and mask[1, :, 2:].all()
    assert (batch[mask[:, None].expand_as(batch)] == 0).all()


def test_incremental_logits_equal_catr_full_buffer_loop(model, images):
    tokens, reference_logits = reference_greedy(model, images[0], max_len=12)
    encoded = model.encode(*model.image_features(*pad_batch([images[0]])))
    state = model.start_decoding(encoded)
    with torch.inference_mode():
        for i, expected in enumerate(reference_logits):
            logits, _ = model.decode(state, torch.tensor([[tokens[i]]]))
            torch.testing.assert_close(logits[0, -1], expected, rtol=1e-4, atol=1e-4)
    assert caption_images(model, [images[0]], max_len=12)[0].tokens == tokens


def test_decoder_attention_is_torch_multihead_attention(model):
    # the decoder computes attention from nn.MultiheadAttention's parameters itself (to reuse
    # keys and values); it must agree with the module's own forward
    layer = model.transformer.decoder.layers[0]
    memory = torch.randn(2, 7, 64)
    padding = torch.tensor([[False] * 7, [False] * 5 + [True] * 2])
    query = torch.randn(2, 3, 64)
    expected, expected_weights = layer.multihead_attn(query, memory, memory,
                                                      key_padding_mask=padding,
                                                      average_attn_weights=False)
    state = model.start_decoding(EncodedImages(memory, torch.zeros_like(memory), padding[:, None]))
    got, weights = layer._cross_attention(query, 0, state.layers[0], ~padding[:, None, None],
                                          need_weights=True)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(weights, expected_weights)


def test_batched_equals_one_at_a_time(model, images):
    batched = caption_images(model, images, max_len=8, attention_layer=-1)
    for image, result in zip(images, batched):
        alone = caption_images(model, [image], max_len=8, attention_layer=-1)[0]
        assert result.tokens == alone.tokens
        np.testing.assert_allclose(result.attention, alone.attention, atol=1e-5)


def test_stops_at_end_token_and_at_max_len(images):
    stopping = small_model(end_bias=50.0)
    assert [r.tokens for r in caption_images(stopping, images, max_len=8)] == \
        [[START_ID, END_ID]] * 3
    running = small_model(end_bias=-50.0)
    for result in caption_images(running, images, max_len=6):
        assert len(result.tokens) == 6 and END_ID not in result.tokens


def test_beam_one_is_greedy_and_beams_are_valid(model, images):
    greedy = caption_images(model, images, max_len=7, attention_layer=-1)
    beam_one = caption_images(model, images, max_len=7, beam=1, attention_layer=-1)
    assert [r.tokens for r in beam_one] == [r.tokens for r in greedy]
    for result in caption_images(model, images, max_len=7, beam=3, attention_layer=-1):
        assert result.tokens[0] == START_ID and 2 <= len(result.tokens) <= 7
        assert result.attention.shape[0] == len(result.tokens) - 1
        np.testing.assert_allclose(result.attention.sum((1, 2)), 1.0, atol=1e-5)


def test_maps_are_each_images_own_grid_and_rows_sum_to_one(model, images):
    results = caption_images(model, images, max_len=5, attention_layer=0, per_head=True)
    for image, result in zip(images, results):
        h, w = (math.ceil(size / model.stride) for size in image.shape[1:])
        assert result.attention.shape == (4, 4, h, w)
        np.testing.assert_allclose(result.attention.sum((2, 3)), 1.0, atol=1e-5)
    assert caption_images(model, images[:1], max_len=5)[0].attention is None


@pytest.mark.parametrize("options", [dict(max_len=129), dict(max_len=1), dict(beam=0),
                                     dict(attention_layer=2), dict(attention_layer=-3)])
def test_bad_options_are_user_errors(model, images, options):
    with pytest.raises(UserError):
        caption_images(model, images[:1], **options)
