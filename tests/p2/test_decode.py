"""Decoding with a small random CATR: fast paths against CATR's own loop, batching, beams, maps."""
import gc
import itertools
import math
import types
import weakref

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from hw3core.errors import UserError
from PIL import ImageOps

from p2.data import pad_batch, preprocess, resize_for_catr
from p2.decode import (USES_KEPT, CudaGraphs, _StaticGreedy, beam_search, caption_images,
                       check_decoding_options, cuda_graphs, encode_images, greedy_search,
                       greedy_search_static, reference_greedy)
from p2.model import EncodedImages, build_model
from p2.tokenizer import END_ID, START_ID
from tests.p2.p2_samples import SMALL_CONFIG, StandInRecorder, sample_photos, small_model


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def images():
    return [preprocess(photo, 299) for photo in sample_photos().values()]


def test_resize_keeps_aspect_and_longer_side_299():
    photos = sample_photos()
    assert resize_for_catr(photos["wide"], 299).size == (299, int(120 * 299 / 451))
    assert resize_for_catr(photos["tall"], 299).size == (int(150 * 299 / 512), 299)
    assert resize_for_catr(photos["square"], 299).size == (299, 299)
    x = preprocess(photos["square"], 299)
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


def test_a_beam_of_one_finds_the_greedy_caption(model, images):
    # beam_search itself, not caption_images, which hands beam=1 to greedy_search
    with torch.inference_mode():
        encoded = encode_images(model, images)
        greedy = greedy_search(model, encoded, 7, attention_layers=(1,))
        beam_one = beam_search(model, encoded, 7, attention_layers=(1,), beam=1)
    assert beam_one[0] == greedy[0]
    for ours, theirs in zip(beam_one[1], greedy[1]):
        torch.testing.assert_close(ours, theirs)


def test_a_beam_does_not_stop_at_weak_endings_while_a_better_caption_is_alive():
    # a made-up decoder whose next-token odds depend on the step only: [SEP] is unlikely at steps
    # 1 and 2 and near-certain at 3. With beam 2, "[SEP]" and "w [SEP]" end at steps 1 and 2
    # (-4.2 and -2.1 per token) while "w w" lives on (-0.02 per token); it must still end.
    word, other, vocab = 5, 6, 110
    odds = [{word: 0.98, END_ID: 0.015, other: 0.005}, {word: 0.98, END_ID: 0.015, other: 0.005},
            {END_ID: 0.98, word: 0.01, other: 0.01}]

    class Steps:
        def __init__(self):
            self.rows, self.step = 1, 0

        def start_decoding(self, encoded):
            return self

        def select(self, rows):
            self.rows = len(rows)

        def decode(self, state, tokens, attention_layers=()):
            probs = torch.full((vocab,), 1e-9)
            for token, p in odds[min(self.step, 2)].items():
                probs[token] = p
            self.step += 1
            return probs.log().expand(self.rows, 1, vocab), None

    encoded = types.SimpleNamespace(memory=torch.zeros(1, 4, 8))
    tokens, _ = beam_search(Steps(), encoded, 10, beam=2)
    assert tokens == [[START_ID, word, word, END_ID]]
    assert greedy_search(Steps(), encoded, 10)[0] == tokens


def test_beams_are_valid(model, images):
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


def test_decoding_options_count_the_layer_from_the_first(model):
    layers = model.config["dec_layers"]
    assert [check_decoding_options(model.config, 128, 3, layer)
            for layer in (None, 0, -1, -layers)] == [None, 0, layers - 1, 0]
    with pytest.raises(UserError, match="--beam must be at least 1, not 0"):
        check_decoding_options(model.config, 128, 0)


def test_one_decode_gives_the_attention_of_several_layers_in_the_order_asked(images):
    torch.manual_seed(0)
    model = build_model({**SMALL_CONFIG, "dec_layers": 3})
    tokens = torch.tensor([[START_ID, 1037, 2417, 4418], [START_ID, 4418, 1037, 0]])
    padding = tokens == 0
    asked = (0, 2, -1)
    with torch.inference_mode():
        encoded = encode_images(model, images[:2])
        logits, weights = model.decode(model.start_decoding(encoded), tokens, padding,
                                       attention_layers=asked)
        assert weights.shape == (2, len(asked), 4, 4, encoded.memory.shape[1])
        for k, layer in enumerate(asked):
            alone_logits, alone = model.decode(model.start_decoding(encoded), tokens, padding,
                                               attention_layers=(layer,))
            torch.testing.assert_close(logits, alone_logits)
            torch.testing.assert_close(weights[:, k], alone[:, 0])
        reversed_order = model.decode(model.start_decoding(encoded), tokens, padding,
                                      attention_layers=asked[::-1])[1]
        plain_logits, nothing = model.decode(model.start_decoding(encoded), tokens, padding,
                                             attention_layers=())
    torch.testing.assert_close(reversed_order, weights.flip(1))
    assert nothing is None
    torch.testing.assert_close(logits, plain_logits)
    torch.testing.assert_close(weights[:, 1], weights[:, 2])  # 2 and -1: the same, last layer
    assert not torch.allclose(weights[:, 0], weights[:, 1])


WORDS = [1037, 2417, 4418]  # a, red, circle


@pytest.fixture(scope="module")
def three_word_model():
    """A small captioner that can say three words and [SEP]."""
    full = small_model(seed=1)
    restricted = build_model({**full.config, "output_tokens": sorted([END_ID, *WORDS])})
    restricted.load_state_dict(full.state_dict())
    return restricted


def every_caption(max_len):
    """Every caption of WORDS a search can return within ``max_len`` positions, [CLS] first."""
    ended = [[START_ID, *middle, END_ID] for length in range(max_len - 1)
             for middle in itertools.product(WORDS, repeat=length)]
    return ended + [[START_ID, *words] for words in itertools.product(WORDS, repeat=max_len - 1)]


def teacher_forced(model, encoded, caption, layer):
    """(mean log-probability of the generated tokens, the README's ranking; that layer's
    attention rows averaged over heads, (generated tokens, h, w)) for one encoded image."""
    with torch.inference_mode():
        logits, weights = model.decode(model.start_decoding(encoded), torch.tensor([caption[:-1]]),
                                       attention_layers=(layer,))
    log_probs = logits[0].log_softmax(-1)
    generated = caption[1:]
    score = sum(log_probs[i, token].item() for i, token in enumerate(generated)) / len(generated)
    height, width = encoded.grid_sizes()[0]
    return score, weights[0, 0].mean(0).unflatten(-1, (height, width)).numpy()


def test_a_beam_as_wide_as_the_search_space_returns_the_best_caption_and_its_maps(
        three_word_model, images):
    captions = every_caption(max_len=4)
    assert len(captions) == 40
    for image in images:
        with torch.inference_mode():
            encoded = encode_images(three_word_model, [image])
        scored = [teacher_forced(three_word_model, encoded, c, layer=1) for c in captions]
        order = sorted(range(len(captions)), key=lambda i: scored[i][0], reverse=True)
        assert scored[order[0]][0] - scored[order[1]][0] > 1e-4  # one clear best
        (result,) = caption_images(three_word_model, [image], max_len=4, beam=len(captions),
                                   attention_layer=1)
        assert result.tokens == captions[order[0]]
        np.testing.assert_allclose(result.attention, scored[order[0]][1], atol=1e-5)


@pytest.fixture(scope="module")
def mixed_images():
    """Two pairs of same-size images (they share one backbone pass) and one of its own size."""
    photos = sample_photos()
    return [preprocess(photo, 299) for photo in (
        photos["wide"], ImageOps.mirror(photos["wide"]), photos["tall"], photos["square"],
        ImageOps.flip(photos["square"]))]


@pytest.mark.parametrize("beam", [1, 3])
def test_a_caption_and_its_maps_do_not_depend_on_the_images_batched_with_it(mixed_images, beam):
    # [SEP] made about as likely as a word: captions end at different steps, so rows of the
    # batch finish while others go on
    model = small_model(seed=0, end_bias=0.3)
    batched = caption_images(model, mixed_images, max_len=10, beam=beam, attention_layer=-1)
    lengths = [len(result.tokens) for result in batched]
    assert len(set(lengths)) > 1 and min(lengths) < 10
    for image, result in zip(mixed_images, batched):
        (alone,) = caption_images(model, [image], max_len=10, beam=beam, attention_layer=-1)
        assert result.tokens == alone.tokens
        np.testing.assert_allclose(result.attention, alone.attention, atol=1e-5)


def test_the_default_layer_is_the_last_and_layer_0_is_the_first_decoder_layers(model, images):
    last = caption_images(model, images[:1], max_len=6, attention_layer=-1)[0]
    named = caption_images(model, images[:1], max_len=6, attention_layer=1)[0]
    np.testing.assert_array_equal(last.attention, named.attention)
    first = caption_images(model, images[:1], max_len=6, attention_layer=0)[0]
    assert first.tokens == last.tokens and not np.allclose(first.attention, last.attention)

    # layer 0 recomputed with nn.MultiheadAttention's own forward, on the whole caption at once
    # (CATR's pre-norm layer): row k is what the query that produced token k looked at
    layer = model.transformer.decoder.layers[0]
    seen = {}
    hook = layer.register_forward_pre_hook(lambda module, args: seen.update(t=args[0], pos=args[1]))
    pixels, pixel_mask = pad_batch(images[:1])
    caption = torch.tensor([first.tokens[:-1]])
    with torch.no_grad():
        model(pixels, pixel_mask, caption, torch.zeros_like(caption, dtype=torch.bool))
        hook.remove()
        encoded = model.encode(*model.image_features(pixels, pixel_mask))
        t, query_pos = seen["t"], seen["pos"]
        n = t.shape[1]
        normed = layer.norm1(t)
        future = torch.ones(n, n, dtype=torch.bool).triu(1)
        t = t + layer.self_attn(normed + query_pos, normed + query_pos, normed,
                                attn_mask=future)[0]
        normed = layer.norm2(t)
        weights = layer.multihead_attn(normed + query_pos, encoded.memory + encoded.pos,
                                       encoded.memory)[1]
    h, w = first.attention.shape[1:]
    np.testing.assert_allclose(first.attention, weights[0].reshape(n, h, w).numpy(), atol=1e-5)


def test_preprocessing_is_catrs_bicubic_resize_and_normalisation():
    photo = sample_photos()["wide"]
    scale = 299 / max(photo.size)
    resized = photo.resize((int(photo.width * scale), int(photo.height * scale)),
                           resample=3)  # PIL.Image.BICUBIC
    expected = (torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255).permute(2, 0, 1)
                - 0.5) / 0.5
    torch.testing.assert_close(preprocess(photo, 299), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("max_len, check_every", [(10, 8), (17, 8), (10, 1), (17, 3)])
def test_the_static_cache_search_gives_the_eager_searchs_tokens_and_rows(
        mixed_images, max_len, check_every, three_word_model):
    # what a GPU runs (captured as a CUDA graph there), here without graphs: captions that end
    # at different steps, one that may run to max_len, past the first end-of-caption check, at
    # every interval between checks; and a restricted head
    lengths = set()
    for model in (small_model(seed=0, end_bias=0.3), three_word_model):
        with torch.inference_mode():
            encoded = encode_images(model, mixed_images)
            eager = greedy_search(model, encoded, max_len, (0, -1))
            static = greedy_search_static(model, encoded, max_len, (0, -1),
                                          check_every=check_every)
        assert static[0] == eager[0]
        lengths |= {len(tokens) for tokens in eager[0]}
        for got, want in zip(static[1], eager[1]):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert len(lengths) > 2 and max_len in lengths


def assert_same_encoding(got, want):
    for a, b in zip((got.memory, got.pos, got.padding), (want.memory, want.pos, want.padding)):
        assert torch.equal(a, b)


def test_encoder_graphs_record_a_shape_on_its_second_use_and_replay_it_on_new_images(
        model, mixed_images):
    wide, wide_mirrored, tall, square, square_flipped = mixed_images
    recorder = StandInRecorder()
    graphs = CudaGraphs(capacity=2, record=recorder)
    with torch.inference_mode():
        def check(batch):
            assert_same_encoding(encode_images(model, batch, graphs), encode_images(model, batch))
        check([wide])
        assert recorder.recorded == 0  # a size met once runs eagerly
        check([wide_mirrored])
        assert recorder.recorded == 1
        check([wide])  # replayed on the static inputs, refreshed with this image
        check([square, square_flipped])
        check([square_flipped, square])
        check([tall])
        check([tall])
        assert recorder.recorded == 3 and len(graphs.entries) == 2  # the wide one was dropped
        check([wide])
        check([wide])
        assert recorder.recorded == 4
        check([wide, tall])  # two sizes: padded feature maps, the eager way
        assert recorder.recorded == 4


def test_the_decoders_graph_is_recorded_once_and_replayed_on_other_images(mixed_images):
    # [SEP] about as likely as a word: the captions of each batch end at different steps
    model = small_model(seed=0, end_bias=0.3)
    recorder = StandInRecorder()
    graphs = CudaGraphs(record=recorder)
    wide, wide_mirrored, tall, square, square_flipped = mixed_images
    kept = []
    with torch.inference_mode():
        for batch, layers in [([square, square_flipped], (-1,)), ([square_flipped, square], (-1,)),
                              ([wide, wide_mirrored], (-1,)), ([square, square], (-1,)),
                              ([square, square_flipped], (0, -1))]:
            encoded = encode_images(model, batch)
            eager = greedy_search(model, encoded, 10, layers)
            replayed = greedy_search_static(model, encoded, 10, layers, graphs)
            assert replayed[0] == eager[0]
            for got, want in zip(replayed[1], eager[1]):
                torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
            kept.append((replayed[1][0].clone(), replayed[1][0]))
    # one graph per shape and set of layers; the rows returned are the caller's own
    assert recorder.recorded == 3
    assert all(torch.equal(copy, rows) for copy, rows in kept)

    # padded feature maps of the same size: the graph recorded for the first batch is replayed
    # for the second, and the first's encoding, which its caller keeps, stays as it was
    graphs = CudaGraphs(record=recorder)
    with torch.inference_mode():
        first = encode_images(model, [wide, square])
        padding = first.padding.clone()
        greedy_search_static(model, first, 6, (), graphs)
        second = encode_images(model, [square, square_flipped])
        assert second.padding.shape == padding.shape and not torch.equal(second.padding, padding)
        assert (greedy_search_static(model, second, 6, (), graphs)[0]
                == greedy_search(model, second, 6)[0])
    assert recorder.recorded == 4 and torch.equal(first.padding, padding)


def test_a_graph_that_cannot_be_recorded_warns_once_and_runs_eagerly(model, mixed_images,
                                                                     capsys):
    tall = mixed_images[2]
    graphs = CudaGraphs(record=StandInRecorder(fail=True))
    with torch.inference_mode():
        encoded = encode_images(model, [tall])
        eager = greedy_search(model, encoded, 6, (-1,))
        for _ in range(3):
            assert_same_encoding(encode_images(model, [tall], graphs), encoded)
            assert greedy_search_static(model, encoded, 6, (-1,), graphs)[0] == eager[0]
    assert capsys.readouterr().err.splitlines() == [
        "warning: running without a CUDA graph "
        "(operation not permitted when stream is capturing)"]


def test_graphs_never_replay_weights_a_model_no_longer_has(model, images):
    graphs = CudaGraphs(record=StandInRecorder())
    other = small_model(seed=1)
    with torch.inference_mode():
        for _ in range(2):
            encoded = encode_images(model, images[:1], graphs)
            greedy_search_static(model, encoded, 6, (), graphs)
        assert_same_encoding(encode_images(other, images[:1], graphs),
                             encode_images(other, images[:1]))
        encoded = encode_images(other, images[:1])
        assert (greedy_search_static(other, encoded, 6, (), graphs)[0]
                == greedy_search(other, encoded, 6)[0])


def test_graphs_follow_weights_loaded_in_place_and_record_again_for_moved_ones(images):
    model, recorder = small_model(), StandInRecorder()
    graphs = CudaGraphs(record=recorder)

    def caption():
        encoded = encode_images(model, images[:1])
        found = greedy_search_static(model, encoded, 6, (), graphs)[0]
        assert found == greedy_search(model, encoded, 6)[0]
        return found

    with torch.inference_mode():
        first = caption()
        model.load_state_dict(small_model(seed=1).state_dict())  # copied into the same tensors
        assert caption() != first and recorder.recorded == 1
        # .to() and the like put weights and buffers of nested modules in new tensors
        weight = model.transformer.decoder.layers[0].linear1.weight
        weight.data = weight.data.clone()
        caption()
        assert recorder.recorded == 2
        module, name = next((m, n) for m in model.modules() for n, b in m._buffers.items()
                            if b is not None)
        module._buffers[name] = module._buffers[name].clone()
        caption()
        assert recorder.recorded == 3


def test_the_graphs_kept_for_a_model_go_with_it(images):
    model = small_model()
    graphs = cuda_graphs(model)
    assert cuda_graphs(model) is graphs
    # a recorded graph's replay holds no Python reference to what it ran
    graphs.record = lambda step, reset: (step(), reset(), lambda: None)[-1]
    with torch.inference_mode():
        for _ in range(2):
            greedy_search_static(model, encode_images(model, images[:1], graphs), 5, (-1,),
                                 graphs)
    assert len(graphs.entries) == 2
    alive = weakref.ref(model)
    del model, graphs
    gc.collect()
    assert alive() is None


def test_graphs_are_recorded_in_the_callers_precision_without_autocasts_weight_cache(model,
                                                                                     images):
    # a cached low-precision copy of a weight lives until the caller's autocast region ends;
    # a graph replayed in a later region would read freed memory
    recorder = StandInRecorder()
    graphs = CudaGraphs(record=recorder)
    with torch.inference_mode():
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                encoded = encode_images(model, images[:1], graphs)
                greedy_search_static(model, encoded, 5, (-1,), graphs)
                assert torch.is_autocast_cache_enabled()  # the caller's region as it was
        encode_images(model, images[1:2], graphs)
        encode_images(model, images[1:2], graphs)
    assert recorder.autocast == [(True, torch.bfloat16, False), (True, torch.bfloat16, False),
                                 (False, torch.bfloat16, False)]


def test_the_counts_of_shapes_not_yet_recorded_stay_bounded(model):
    # a long run over images of many sizes must not grow the cache without end
    graphs = CudaGraphs(record=StandInRecorder())
    for size in range(USES_KEPT + 50):
        assert graphs.get(model, ("encoder", size), build=None, record_on_use=2) is None
    assert len(graphs.uses) == USES_KEPT and not graphs.entries


@pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")
def test_the_gpus_encoder_graph_and_decoder_step_keep_every_tensor_on_the_models_device(
        mixed_images):
    # CI has no GPU: on fake CUDA tensors (devices and shapes, no data) a tensor made on the
    # host and met by the GPU's work raises here as it would there
    model = small_model()
    square, square_flipped = mixed_images[3:]
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.inference_mode():
        for module in model.modules():
            for tensors in (module._parameters, module._buffers):
                for name, tensor in tensors.items():
                    if tensor is not None:
                        tensors[name] = type(tensor)(mode.from_tensor(tensor).cuda())
        graphs = CudaGraphs(record=StandInRecorder())
        batch = [mode.from_tensor(image).cuda() for image in (square, square_flipped)]
        for _ in range(2):  # the second records the encoder's graph
            encoded = encode_images(model, batch, graphs)
        decoding = _StaticGreedy(model, encoded, 6, (0, -1))
        decoding.load(encoded)
        decoding.reset()
        for _ in range(5):
            decoding.step()
        assert graphs.record.recorded == 1 and encoded.memory.is_cuda
        assert all(t.is_cuda for t in (decoding.tokens, decoding.ended, decoding.rows,
                                       decoding.state.position))


def test_a_graph_recorded_in_training_mode_is_not_replayed_in_evaluation(images):
    # a training-mode step draws dropout masks: replayed under eval() it would caption wrongly
    model, recorder = small_model(), StandInRecorder()
    graphs = CudaGraphs(record=recorder)
    with torch.inference_mode():
        encoded = encode_images(model, images[:1])
        for training in (True, False, True):
            model.train(training)
            greedy_search_static(model, encoded, 5, (), graphs)
    assert recorder.recorded == 2
