"""Captioning: greedy and beam decoding, and the cross-attention rows (preprocessing: p2/data.py).

The backbone and encoder run once per image. The decoder then runs one position per step on the
caption so far, reusing the image keys/values and the past self-attention keys/values kept in a
DecoderState. Because of the causal mask this gives the logits CATR's own loop gets by re-running
the whole model on its 128-position buffer at every step (``reference_greedy`` below).

Images of the same size share one backbone pass without padding. Padding an image changes its
features (the receptive fields near its edge reach into the padding, and the nearest-resized
pixel mask can keep a padded row), so images of other sizes get their own pass, and only their
feature maps are padded and masked: a caption never depends on the images batched with it.
"""
import functools
import sys
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from hw3core.cli import layer_option
from hw3core.errors import UserError
from hw3core.images import ImageFileDataset, collate_list, or_skip
from hw3core.runtime import autocast, share_cores
from p2.data import pad_batch, resize_for_catr, to_model_input
from p2.model import EncodedImages
from p2.tokenizer import END_ID, PAD_ID, START_ID


def check_decoding_options(config, max_len, beam=1, layer=None):
    """Raise UserError unless a model of ``config`` can decode with these options; return
    ``layer`` (a decoder layer index, negative counts from the end) counted from the first, or
    None when it is None."""
    limit = config["max_position_embeddings"]
    if not 2 <= max_len <= limit:
        raise UserError(f"--max-len must be between 2 and {limit}, not {max_len}")
    if beam < 1:
        raise UserError(f"--beam must be at least 1, not {beam}")
    if layer is None:
        return None
    return layer_option(layer, config["dec_layers"], "decoder layers")


def encode_images(model, images, graphs=None):
    """EncodedImages for (3, h, w) tensors of any sizes; one backbone pass per distinct size.

    With ``graphs`` (CudaGraphs), images all of one size run as a recorded graph.
    """
    by_size = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[1:]), []).append(i)
    if graphs is not None and len(by_size) == 1:
        return _encode_one_size(model, *pad_batch(images), graphs)
    features = [None] * len(images)
    for indices in by_size.values():
        group = model.image_features(*pad_batch([images[i] for i in indices]))
        for j, i in enumerate(indices):
            features[i] = [part[j] for part in group]
    height = max(f.shape[-2] for f, _, _ in features)
    width = max(f.shape[-1] for f, _, _ in features)

    def pad(x, value):
        return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]), value=value)

    return model.encode(torch.stack([pad(f, 0) for f, _, _ in features]),
                        torch.stack([pad(m, True) for _, m, _ in features]),
                        torch.stack([pad(p, 0) for _, _, p in features]))


USES_KEPT = 256  # CudaGraphs' counts of the keys not yet recorded


class CudaGraphs:
    """Recorded CUDA graphs of one model, kept for reuse: the ``capacity`` most recently used.

    At batch 1 a backbone pass or a decoder step is a few hundred small kernels whose launches
    cost more than their work; one graph replay launches them all at once. A graph reads the
    very tensors it was recorded with, so an entry is keyed by where the model's weights are,
    the autocast precision and inference mode, besides the caller's own key (its shapes and
    options). An entry is recorded at its ``record_on_use``-th use: recording costs about two
    eager runs, which a backbone pass of a size met once would not win back. A recording that
    fails (a kernel that cannot be captured) gives a one-line warning, and that key runs eagerly
    from then on. ``record`` is _as_cuda_graph, or a stand-in for tests on a CPU.
    """

    def __init__(self, capacity=8, record=None):
        self.capacity = capacity
        self.record = record or _as_cuda_graph
        self.uses = {}  # key -> uses so far, while short of recording
        self.entries = OrderedDict()  # key -> (replay, what build() gave) or None: eager

    def get(self, model, key, build, record_on_use=1):
        """(replay, payload) for ``key``, recording ``build()``'s (step, reset, payload) when
        it is time; None where the caller is to run eagerly."""
        weights = _weights_key(model)
        device = next(model.parameters()).device
        precision = (torch.get_autocast_dtype(device.type)
                     if torch.is_autocast_enabled(device.type) else None)
        key = (key, str(device), precision, torch.is_inference_mode_enabled(), model.training,
               weights)
        if key not in self.entries:
            self.uses[key] = self.uses.get(key, 0) + 1
            if self.uses[key] < record_on_use:
                if len(self.uses) > USES_KEPT:  # the oldest counts go: a size met long ago
                    del self.uses[next(iter(self.uses))]
                return None
            del self.uses[key]
            step, reset, payload = build()
            try:
                # a graph must make its own low-precision copies of the weights: from autocast's
                # cache it would read copies freed when the caller's autocast region ends (for
                # this reason torch's make_graphed_callables refuses the cache too)
                with torch.autocast(device.type, dtype=precision, enabled=precision is not None,
                                    cache_enabled=False):
                    self.entries[key] = self.record(step, reset), payload
            except RuntimeError as err:  # a kernel that cannot be captured: slower, still right
                _warn_once(f"warning: running without a CUDA graph ({str(err).splitlines()[0]})")
                self.entries[key] = None
            if len(self.entries) > self.capacity:
                self.entries.popitem(last=False)
        self.entries.move_to_end(key)
        return self.entries[key]


def _weights_key(model):
    """Where every weight and buffer of ``model`` is. Walked by hand: model.parameters() and
    model.buffers() take 1.1 ms for CATR, twice per captioned batch, and this walk 0.2 to 0.4."""
    where, modules = [], [model]
    while modules:
        module = modules.pop()
        for tensors in (module._parameters, module._buffers):
            where.extend(t.data_ptr() for t in tensors.values() if t is not None)
        modules.extend(module._modules.values())
    return tuple(where)


_CUDA_GRAPHS = weakref.WeakKeyDictionary()


def cuda_graphs(model):
    """The CudaGraphs kept for ``model`` while it lives."""
    return _CUDA_GRAPHS.setdefault(model, CudaGraphs())


def _encode_one_size(model, images, pixel_mask, graphs):
    """model.encode(*model.image_features(...)), replayed from ``graphs`` where it has a graph
    for this shape (recorded on the shape's second use)."""
    def build():
        inputs, outputs = (images.clone(), pixel_mask.clone()), []

        def step():
            encoded = model.encode(*model.image_features(*inputs))
            outputs[:] = (encoded.memory, encoded.pos, encoded.padding)
        return step, lambda: None, (inputs, outputs)

    recorded = graphs.get(model, ("encoder", tuple(images.shape), images.dtype), build,
                          record_on_use=2)
    if recorded is None:
        return model.encode(*model.image_features(images, pixel_mask))
    replay, (inputs, outputs) = recorded
    inputs[0].copy_(images)
    inputs[1].copy_(pixel_mask)
    replay()
    # the next replay overwrites the outputs, and a caller may keep these
    return EncodedImages(*(x.clone() for x in outputs))


def greedy_search(model, encoded, max_len, attention_layers=()):
    """Argmax decoding, batched; a caption stops at [SEP] or at ``max_len`` positions.

    Returns each image's token ids ([CLS] first) and, with ``attention_layers`` (decoder layer
    indices, as Caption.decode takes them), its attention rows (generated tokens,
    len(attention_layers), heads, h*w), else None.
    """
    count = encoded.memory.shape[0]
    device = encoded.memory.device
    state = model.start_decoding(encoded)
    images = torch.arange(count)  # the image each row of the state belongs to
    tokens = [[START_ID] for _ in range(count)]
    rows = [[] for _ in range(count)]
    last = torch.full((count, 1), START_ID, device=device)
    for _ in range(max_len - 1):
        logits, weights = model.decode(state, last, attention_layers=attention_layers)
        next_ids = logits[:, -1].argmax(-1)
        for row, (image, token) in enumerate(zip(images.tolist(), next_ids.tolist())):
            tokens[image].append(token)
            if weights is not None:
                rows[image].append(weights[row, ..., -1, :])
        going = next_ids != END_ID
        if not going.all():
            keep = going.nonzero()[:, 0]
            if not len(keep):
                break
            state.select(keep)
            images, next_ids = images[keep.cpu()], next_ids[keep]
        last = next_ids[:, None]
    attention = [torch.stack(r) for r in rows] if attention_layers else [None] * count
    return tokens, attention


# How often the static search asks the device whether every caption has ended: each asking
# waits for the GPU, so not at every token
ENDED_CHECK_EVERY = 8


class _StaticGreedy:
    """The fixed-shape buffers of greedy_search_static and its step, which reads and writes only
    them: the decoding state, the tokens so far, which captions ended, the attention rows."""

    def __init__(self, model, encoded, max_len, attention_layers):
        count, device = encoded.memory.shape[0], encoded.memory.device
        # kept by the model's CudaGraphs, which must not keep the model alive
        self.model = weakref.proxy(model)
        self.max_len, self.attention_layers = max_len, attention_layers
        self.state = model.start_decoding(encoded, static_length=max_len)
        # its own padding, not a view of the caller's, which load() would overwrite
        self.state.memory_padding = self.state.memory_padding.clone()
        self.tokens = torch.full((count, max_len), PAD_ID, device=device)
        self.ended = torch.zeros(count, dtype=torch.bool, device=device)
        self.rows = None
        if attention_layers:
            self.rows = torch.zeros(count, max_len - 1, len(attention_layers),
                                    model.config["nheads"], encoded.memory.shape[1],
                                    device=device)

    def load(self, encoded):
        """Other images of the same shapes: their keys and values into the state's buffers."""
        for layer, cache in zip(self.model.transformer.decoder.layers, self.state.layers):
            memory_k, memory_v = layer.memory_keys_values(encoded.memory, encoded.pos)
            cache.memory_k.copy_(memory_k)
            cache.memory_v.copy_(memory_v)
        self.state.memory_padding.copy_(encoded.padding.flatten(1))

    def reset(self):
        self.tokens.fill_(PAD_ID)
        self.tokens[:, 0] = START_ID
        self.ended.zero_()
        self.state.position.zero_()

    def step(self):
        state = self.state
        current = self.tokens.index_select(1, state.position.view(1))[:, 0]
        logits, weights = self.model.decode_step(state, current, self.attention_layers)
        written = state.position.view(1)  # moved on by one: where the next token goes
        next_ids = logits.argmax(-1).masked_fill(self.ended, PAD_ID)
        self.tokens.index_copy_(1, written, next_ids[:, None])
        if self.rows is not None:
            self.rows.index_copy_(1, written - 1, weights[:, None].to(self.rows.dtype))
        self.ended.logical_or_(next_ids == END_ID)

    def results(self):
        """Each row's tokens to its [SEP] and its attention rows (copies: the buffers are
        reused)."""
        rows = None if self.rows is None else self.rows.clone()  # one copy for the batch
        found, attention = [], []
        for row, ids in enumerate(self.tokens.tolist()):
            length = ids.index(END_ID) + 1 if END_ID in ids else self.max_len
            found.append(ids[:length])
            attention.append(None if rows is None else rows[row, :length - 1])
        return found, attention


def greedy_search_static(model, encoded, max_len, attention_layers=(), graphs=None,
                         check_every=None):
    """greedy_search with fixed shapes: the self-attention cache preallocated to ``max_len``
    positions, every row decoded at every step (a row that ended emits [PAD]), the next token,
    the end test and the attention rows kept on the device. So a step runs no host sync, and
    with ``graphs`` (CudaGraphs) it is replayed as a CUDA graph, recorded at the first call of
    these shapes and options, which takes the launch and Python overhead of a step's few hundred
    small kernels out of the loop. The result is greedy_search's: the same tokens and rows.
    Whether every caption has ended is asked every ``check_every`` steps (ENDED_CHECK_EVERY)."""
    check_every = check_every or ENDED_CHECK_EVERY

    def build():
        decoding = _StaticGreedy(model, encoded, max_len, attention_layers)
        return decoding.step, decoding.reset, decoding

    key = ("decoder", tuple(encoded.memory.shape), encoded.memory.dtype, max_len,
           tuple(attention_layers))
    recorded = graphs.get(model, key, build) if graphs is not None else None
    if recorded is None:
        decoding = _StaticGreedy(model, encoded, max_len, attention_layers)
        run = decoding.step
    else:
        run, decoding = recorded
        decoding.load(encoded)
    decoding.reset()
    for i in range(max_len - 1):
        run()
        if (i + 1) % check_every == 0 and bool(decoding.ended.all()):
            break
    return decoding.results()


@functools.cache
def _warn_once(message):
    print(message, file=sys.stderr)


def _as_cuda_graph(step, reset):
    """``step`` recorded as a CUDA graph; returns its replay. One warm-up step runs on a side
    stream first (kernel choices and allocations happen outside the graph; one, as a caption of
    max_len 2 has room for no more), then ``reset`` undoes what it did to the buffers it writes."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    reset()
    graph = torch.cuda.CUDAGraph()
    caller = torch.cuda.current_stream()
    try:
        with torch.cuda.graph(graph):
            step()
    finally:  # a capture that fails at its end leaves torch.cuda.graph's own stream current
        torch.cuda.set_stream(caller)
    reset()
    return graph.replay


@dataclass
class _Hypothesis:
    score: float  # log-probability per generated token
    tokens: list
    attention: Optional[torch.Tensor]


def beam_search(model, encoded, max_len, attention_layers=(), beam=3):
    """Beam search, batched; returns what greedy_search returns, for the best hypothesis.

    Each image keeps ``beam`` live hypotheses. An [SEP] among the best ``beam`` candidates of a step
    ends a hypothesis. Hypotheses are ranked by log-probability per generated token, so that
    longer captions are not penalised for length. An image is done once it has ``beam`` ended
    ones and no live one scores better per token so far than the best of them (HF's rule): three
    weak captions ending early would otherwise stop the search before a near-certain longer one
    ends.
    """
    count = encoded.memory.shape[0]
    device = encoded.memory.device
    state = model.start_decoding(encoded)
    state.select(torch.arange(count, device=device).repeat_interleave(beam))
    # all beams of an image start identical: only the first may expand at the first step
    scores = torch.full((count, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0
    sequences = torch.full((count * beam, 1), START_ID, device=device)
    history = None  # attention rows so far (rows, steps, layers, heads, h*w)
    ended = [[] for _ in range(count)]
    images = list(range(count))  # the image of each block of ``beam`` rows

    def hypothesis(row, score, token=None, weights=None):
        tokens = sequences[row].tolist() + ([] if token is None else [token])
        rows = history[row] if history is not None else None
        if weights is not None:
            rows = weights[row, None] if rows is None else torch.cat((rows, weights[row, None]))
        return _Hypothesis(score / (len(tokens) - 1), tokens, rows)

    for _ in range(max_len - 1):
        logits, weights = model.decode(state, sequences[:, -1:],
                                       attention_layers=attention_layers)
        if weights is not None:
            weights = weights[..., -1, :]
        log_probs = logits[:, -1].float().log_softmax(-1)
        vocab = log_probs.shape[-1]
        totals = (scores.view(-1, 1) + log_probs).view(len(images), beam * vocab)
        top_scores, top_indices = totals.topk(2 * beam, dim=1)
        parents, next_ids, next_scores, still_searching = [], [], [], []
        for block, image in enumerate(images):
            alive = []
            candidates = zip(top_scores[block].tolist(), top_indices[block].tolist())
            for rank, (score, index) in enumerate(candidates):
                row, token = block * beam + index // vocab, index % vocab
                if token == END_ID:
                    if rank < beam:
                        ended[image].append(hypothesis(row, score, token, weights))
                else:
                    alive.append((row, token, score))
                    if len(alive) == beam:
                        break
            best_ended = max((h.score for h in ended[image]), default=float("-inf"))
            # this step's tokens included, [CLS] not
            best_alive = alive[0][2] / sequences.shape[1] if alive else float("-inf")
            if len(ended[image]) < beam or best_alive > best_ended:
                still_searching.append(image)
                for row, token, score in alive:
                    parents.append(row)
                    next_ids.append(token)
                    next_scores.append(score)
        if not still_searching:
            break
        parents = torch.tensor(parents, device=device)
        state.select(parents)
        next_ids = torch.tensor(next_ids, device=device)[:, None]
        sequences = torch.cat((sequences[parents], next_ids), 1)
        if weights is not None:
            step = weights[parents][:, None]
            history = step if history is None else torch.cat((history[parents], step), 1)
        scores = torch.tensor(next_scores, device=device).view(-1, beam)
        images = still_searching
    else:
        # max_len reached: the live hypotheses compete with the ended ones as they are
        for block, image in enumerate(images):
            for row in range(block * beam, (block + 1) * beam):
                ended[image].append(hypothesis(row, scores.view(-1)[row].item()))
    best = [max(hypotheses, key=lambda h: h.score) for hypotheses in ended]
    return [h.tokens for h in best], [h.attention for h in best]


@dataclass
class Captioned:
    tokens: list  # generated ids, [CLS] first, [SEP] last unless max_len was reached
    attention: Optional[np.ndarray]  # (generated tokens, [heads,] h, w) float32, rows sum to 1


def caption_images(model, images, max_len=128, beam=1, attention_layer=None, per_head=False):
    """Caption (3, h, w) tensors from ``preprocess``; one Captioned per image, in order.

    ``attention_layer`` (a decoder layer index, negative counts from the end) asks for the
    cross-attention rows: row k is the attention of the query that produced generated token k,
    cut to the image's own feature map, averaged over heads unless ``per_head``. Options a model
    cannot decode with raise UserError (check_decoding_options).
    """
    layer = check_decoding_options(model.config, max_len, beam, attention_layer)
    device = next(model.parameters()).device
    graphs = cuda_graphs(model) if device.type == "cuda" else None
    if beam > 1:
        search = partial(beam_search, beam=beam)
    elif graphs is not None:  # on a CPU the eager loop's dropping of ended rows pays more
        search = partial(greedy_search_static, graphs=graphs)
    else:
        search = greedy_search
    with torch.inference_mode(), autocast(device):
        encoded = encode_images(model, [image.to(device) for image in images], graphs)
        tokens, attention = search(model, encoded, max_len, () if layer is None else (layer,))
        if layer is None:
            return [Captioned(t, None) for t in tokens]
        # the batch's rows and map sizes fetched from the device at once, not image by image:
        # each fetch waits for it
        rows = torch.cat([a[:, 0] for a in attention]).float().cpu()
        rows = rows.split([len(a) for a in attention])
        sizes = encoded.grid_sizes()
    grid = encoded.padding.shape[1:]
    return [Captioned(t, _attention_maps(r, grid, size, per_head))
            for t, r, size in zip(tokens, rows, sizes)]


def _attention_maps(rows, grid, size, per_head):
    """(n, heads, h*w) rows over the padded batch's (h, w) ``grid`` -> (n, [heads,] rows,
    columns) over one image's own ``size`` (rows, columns)."""
    height, width = size
    maps = rows.unflatten(-1, grid)[..., :height, :width]
    return (maps if per_head else maps.mean(1)).numpy()


def caption_folder(model, paths, batch_size=8, workers=None, **options):
    """Yield (path, resized PIL image, Captioned) for each readable image in ``paths``, in order.

    Unreadable files, and images whose captioning fails, are named on stderr and skipped (a
    failing batch is captioned again one image at a time). ``workers``: processes reading the
    images (share_cores picks). ``options`` go to caption_images.
    """
    resize = partial(resize_for_catr, side=model.config["input_size"])
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(ImageFileDataset(paths, resize),
                                         batch_size=batch_size, collate_fn=collate_list,
                                         num_workers=share_cores(workers, device))
    for batch in loader:
        inputs = [to_model_input(image) for image, _ in batch]
        try:
            results = caption_images(model, inputs, **options)
        except UserError:
            raise
        except Exception:  # find the image at fault: one at a time, skipping any that fails
            results = [or_skip(paths[index], lambda x=x: caption_images(model, [x], **options)[0])
                       for x, (_, index) in zip(inputs, batch)]
        for (image, index), result in zip(batch, results):
            if result is not None:
                yield paths[index], image, result


def reference_greedy(model, image, max_len=128):
    """CATR's predict loop for one preprocessed image, kept as the reference for tests and
    benchmarks: the whole model, backbone included, re-runs on the full caption buffer at every
    step. Returns the token ids and each step's logits (vocab,)."""
    positions = model.config["max_position_embeddings"]
    device = next(model.parameters()).device
    images, pixel_mask = pad_batch([image.to(device)])
    caption = torch.full((1, positions), PAD_ID, device=device)
    caption_padding = torch.ones(1, positions, dtype=torch.bool, device=device)
    caption[0, 0], caption_padding[0, 0] = START_ID, False
    step_logits = []
    with torch.inference_mode(), autocast(device):
        for i in range(max_len - 1):
            logits = model(images, pixel_mask, caption, caption_padding)[0, i]
            step_logits.append(logits.float())
            token = int(logits.argmax())
            if token == END_ID:
                return caption[0, :i + 1].tolist() + [END_ID], step_logits
            caption[0, i + 1], caption_padding[0, i + 1] = token, False
    return caption[0, :max_len].tolist(), step_logits
