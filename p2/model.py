"""CATR, the caption transformer: a ResNet backbone, a DETR-style encoder-decoder and an MLP head.

Module names follow the released CATR checkpoints, so their state dicts load unchanged
(``backbone.0.body.*``, ``input_proj``, ``transformer.{encoder,embeddings,decoder}``, ``mlp``).
Tensors are batch-first throughout.

The decoder is written for incremental decoding: a DecoderState keeps, per layer, the
cross-attention keys and values of the image memory (computed once) and the self-attention keys and
values of the positions decoded so far. Running the whole caption buffer at once, as CATR does, is
the same code with an empty state and a causal mask.
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from hw3core.checkpoints import (check_format, format_tag, load_checkpoint, save_checkpoint,
                                 unwrap_state_dict)
from hw3core.errors import UserError
from p2.configs import BACKBONE_LAYERS, BACKBONES, CATR_CONFIG
from p2.tokenizer import START_ID

HEAD_HIDDEN_DIM = 512  # CATR's MLP head width, fixed in its code rather than configured


def make_config(overrides=None):
    """CATR's configuration with ``overrides`` applied; unknown keys and impossible choices
    raise UserError."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(CATR_CONFIG))
    if unknown:
        raise UserError(f"unknown CATR config keys: {', '.join(unknown)}")
    config = {**CATR_CONFIG, **overrides}
    if config["backbone"] not in BACKBONES:
        raise UserError(f"backbone {config['backbone']!r} is not one of {', '.join(BACKBONES)}")
    if config["backbone_layer"] not in BACKBONE_LAYERS:
        raise UserError(f"backbone_layer must be one of {', '.join(BACKBONE_LAYERS)}, not "
                        f"{config['backbone_layer']!r}")
    if config["backbone_norm"] not in ("frozen", "batch"):
        raise UserError(f"backbone_norm must be frozen or batch, not {config['backbone_norm']!r}")
    if config["dilation"] and config["backbone_layer"] != "layer4":
        raise UserError(f"dilation applies to layer4, which a {config['backbone_layer']} "
                        "backbone leaves out")
    if config["dilation"] and config["backbone"] in ("resnet18", "resnet34"):
        raise UserError(f"{config['backbone']} has basic blocks, which cannot be dilated")
    if not 32 <= config["input_size"] <= 4096:
        raise UserError(f"input_size must be between 32 and 4096, not {config['input_size']}")
    if config["hidden_dim"] % config["nheads"] or config["hidden_dim"] % 2:
        raise UserError("hidden_dim must be even and a multiple of nheads")
    tokens = config["output_tokens"]
    if tokens is not None:
        if (not isinstance(tokens, (list, tuple)) or not tokens
                or not all(isinstance(t, int) and 0 <= t < config["vocab_size"] for t in tokens)
                or list(tokens) != sorted(set(tokens))):
            raise UserError("output_tokens must be None or sorted, distinct token ids below "
                            f"vocab_size ({config['vocab_size']})")
        config["output_tokens"] = list(tokens)
    return config


# ---------------------------------------------------------------------------------------------
# Backbone and position encoding


class Backbone(nn.Module):
    """A torchvision ResNet cut after ``layer`` (its only output); CATR's: frozen batch norm,
    layer4. A backbone trained from scratch needs real batch norm: frozen at its initial values
    it is the identity, and the random network runs unnormalised."""

    def __init__(self, name, dilation, layer="layer4", norm="frozen"):
        super().__init__()
        resnet = getattr(torchvision.models, name)(
            weights=None, norm_layer=FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d,
            replace_stride_with_dilation=[False, False, dilation])
        stages = []
        for child_name, child in resnet.named_children():  # conv1 .. layer4 in order
            stages.append((child_name, child))
            if child_name == layer:
                break
        self.body = nn.Sequential(OrderedDict(stages))
        depth = BACKBONE_LAYERS.index(layer)  # 0 for layer2
        basic = name in ("resnet18", "resnet34")
        self.num_channels = 128 * 2 ** depth * (1 if basic else 4)
        self.stride = 8 * 2 ** depth // (2 if dilation else 1)

    def forward(self, images, pixel_mask):
        """Features (B, C, h, w) and their padding mask (B, h, w), True where there is no image."""
        features = self.body(images)
        mask = F.interpolate(pixel_mask[:, None].float(), size=features.shape[-2:])[:, 0].bool()
        return features, mask


class SinePositionEncoding(nn.Module):
    """DETR's fixed 2-D sine encoding; positions count only the unpadded cells of each image."""

    def __init__(self, num_pos_feats, temperature=10000.0):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = 2 * math.pi

    def forward(self, mask):
        """(B, h, w) padding mask -> (B, 2 * num_pos_feats, h, w): y features, then x features."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * self.scale
        i = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        pairs = torch.div(i, 2, rounding_mode="floor")  # sin and cos of a pair share a frequency
        dim_t = self.temperature ** (2 * pairs / self.num_pos_feats)

        def interleave(embed):
            pos = embed[..., None] / dim_t
            return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(3)

        return torch.cat((interleave(y_embed), interleave(x_embed)), dim=3).permute(0, 3, 1, 2)


class Joiner(nn.Sequential):
    """The backbone and its position encoding (DETR's name; ``backbone.0`` in state dicts)."""

    def __init__(self, backbone, position_encoding):
        super().__init__(backbone, position_encoding)

    def forward(self, images, pixel_mask):
        features, mask = self[0](images, pixel_mask)
        return features, mask, self[1](mask)


# ---------------------------------------------------------------------------------------------
# Attention with the parameters of nn.MultiheadAttention, split so that keys and values can be
# computed once and reused across decoding steps


def _project(attn, x, which):
    """Project ``x`` with the query (0), key (1) or value (2) part of ``attn``'s in_proj."""
    d = attn.embed_dim
    rows = slice(which * d, (which + 1) * d)
    return F.linear(x, attn.in_proj_weight[rows], attn.in_proj_bias[rows])


def _split_heads(x, heads):
    batch, length, dim = x.shape
    return x.view(batch, length, heads, dim // heads).transpose(1, 2)


def _attend(attn, q, k, v, allowed, need_weights):
    """Multi-head attention of projected, head-split q, k, v; ``allowed`` is True where a query
    may look. Returns the output projected back (B, n, D) and, if asked, the weights
    (B, heads, n, keys), which the fused kernel cannot give."""
    dropout = attn.dropout if attn.training else 0.0
    if need_weights:
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out = F.dropout(weights, dropout, attn.training) @ v
    else:
        weights = None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
    out = out.transpose(1, 2).flatten(2)
    return attn.out_proj(out), weights


# ---------------------------------------------------------------------------------------------
# Encoder and decoder layers. Each creates its modules in DETR's order (attention, feed-forward,
# norms, dropouts), which is the key order of the released state dicts.


def _feed_forward(layer, x):
    """The ReLU feed-forward block of an encoder or decoder layer."""
    return layer.linear2(layer.dropout(F.relu(layer.linear1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, hidden_dim, nheads, dim_feedforward, dropout, pre_norm):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden_dim, nheads, dropout, batch_first=True)
        self.linear1 = nn.Linear(hidden_dim, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, hidden_dim)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _self_attention(self, x, pos, padding):
        return self.self_attn(x + pos, x + pos, x, key_padding_mask=padding, need_weights=False)[0]

    def forward(self, x, pos, padding):
        if self.pre_norm:
            x = x + self.dropout1(self._self_attention(self.norm1(x), pos, padding))
            return x + self.dropout2(_feed_forward(self, self.norm2(x)))
        x = self.norm1(x + self.dropout1(self._self_attention(x, pos, padding)))
        return self.norm2(x + self.dropout2(_feed_forward(self, x)))


class DecoderLayer(nn.Module):
    def __init__(self, hidden_dim, nheads, dim_feedforward, dropout, pre_norm):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden_dim, nheads, dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(hidden_dim, nheads, dropout, batch_first=True)
        self.linear1 = nn.Linear(hidden_dim, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, hidden_dim)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        self.nheads = nheads  # the attention here splits heads itself, to cache keys and values

    def memory_keys_values(self, memory, pos):
        """Cross-attention keys (of memory + pos) and values (of memory), split into heads."""
        attn = self.multihead_attn
        return (_split_heads(_project(attn, memory + pos, 1), self.nheads),
                _split_heads(_project(attn, memory, 2), self.nheads))

    def _self_attention(self, x, query_pos, cache, allowed):
        attn = self.self_attn
        q = _split_heads(_project(attn, x + query_pos, 0), self.nheads)
        k = _split_heads(_project(attn, x + query_pos, 1), self.nheads)
        v = _split_heads(_project(attn, x, 2), self.nheads)
        k, v = cache.extend(k, v)
        return _attend(attn, q, k, v, allowed, need_weights=False)[0]

    def _cross_attention(self, x, query_pos, cache, allowed, need_weights):
        q = _split_heads(_project(self.multihead_attn, x + query_pos, 0), self.nheads)
        return _attend(self.multihead_attn, q, cache.memory_k, cache.memory_v, allowed,
                       need_weights)

    def forward(self, t, query_pos, cache, self_allowed, memory_allowed, need_weights=False):
        """Decode the new positions ``t`` (B, n, D) after those already in ``cache`` (extended).

        Returns the new hidden states and, if asked, the cross-attention weights (B, H, n, S).
        """
        if self.pre_norm:
            t = t + self.dropout1(self._self_attention(self.norm1(t), query_pos, cache,
                                                       self_allowed))
            attended, weights = self._cross_attention(self.norm2(t), query_pos, cache,
                                                      memory_allowed, need_weights)
            t = t + self.dropout2(attended)
            return t + self.dropout3(_feed_forward(self, self.norm3(t))), weights
        t = self.norm1(t + self.dropout1(self._self_attention(t, query_pos, cache, self_allowed)))
        attended, weights = self._cross_attention(t, query_pos, cache, memory_allowed, need_weights)
        t = self.norm2(t + self.dropout2(attended))
        return self.norm3(t + self.dropout3(_feed_forward(self, t))), weights


class LayerCache:
    """One decoder layer's reusable tensors: image keys/values and the past self-attention ones."""

    def __init__(self, memory_k, memory_v):
        self.memory_k, self.memory_v = memory_k, memory_v
        self.k = self.v = None

    def extend(self, k, v):
        """Append the new positions' keys and values; return those of all positions so far."""
        if self.k is not None:
            k, v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        self.k, self.v = k, v
        return k, v

    def select(self, rows):
        for name in ("memory_k", "memory_v", "k", "v"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[rows])


class StaticLayerCache(LayerCache):
    """A LayerCache whose self-attention keys and values are preallocated to ``max_len``
    positions and written in place at ``position`` (a 0-d tensor the state shares): every shape
    stays fixed from step to step, so that one step can be captured as a CUDA graph. Keys past the
    position are masked."""

    def __init__(self, memory_k, memory_v, max_len, position):
        super().__init__(memory_k, memory_v)
        batch, heads, _, head_dim = memory_k.shape
        self.k = memory_k.new_zeros(batch, heads, max_len, head_dim)
        self.v = memory_v.new_zeros(batch, heads, max_len, head_dim)
        self.position = position

    def extend(self, k, v):
        self.k.index_copy_(2, self.position.view(1), k.to(self.k.dtype))
        self.v.index_copy_(2, self.position.view(1), v.to(self.v.dtype))
        return self.k, self.v


class DecoderState:
    """Everything decoding a batch of captions reuses from step to step.

    Rows can be dropped (finished captions) or repeated and reordered (beams) with ``select``.
    """

    def __init__(self, layers, memory_padding):
        self.layers = layers
        self.memory_padding = memory_padding  # (B, S), True where the memory holds no image
        self.length = 0  # positions decoded so far

    def select(self, rows):
        for layer in self.layers:
            layer.select(rows)
        self.memory_padding = self.memory_padding[rows]


class StaticDecoderState(DecoderState):
    """A DecoderState of StaticLayerCaches, all writing at ``position`` (a 0-d tensor) of their
    ``static_length`` preallocated positions (Caption.decode_step). Its rows stay as they are: a
    captured step reads these very tensors."""

    def __init__(self, layers, memory_padding, position, static_length):
        super().__init__(layers, memory_padding)
        self.position, self.static_length = position, static_length

    def select(self, rows):
        raise TypeError("a static decoding state keeps its rows; mask ended captions instead")


# ---------------------------------------------------------------------------------------------
# Transformer


class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(config["hidden_dim"], config["nheads"], config["dim_feedforward"],
                         config["dropout"], config["pre_norm"])
            for _ in range(config["enc_layers"]))
        # DETR normalises the encoder output only in the pre-norm arrangement
        self.norm = nn.LayerNorm(config["hidden_dim"]) if config["pre_norm"] else None

    def forward(self, x, pos, padding):
        for layer in self.layers:
            x = layer(x, pos, padding)
        return self.norm(x) if self.norm is not None else x


class DecoderEmbeddings(nn.Module):
    """Word plus learned position embeddings, normalised (BERT style).

    With ``words`` (sorted token ids, [PAD] among them) only their rows are kept: a restricted
    model reads no other word. Any other id reads the padding row.
    """

    def __init__(self, config, words=None):
        super().__init__()
        pad = config["pad_token_id"]
        self.word_embeddings = nn.Embedding(
            config["vocab_size"] if words is None else len(words), config["hidden_dim"],
            padding_idx=pad if words is None else words.index(pad))
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"],
                                                config["hidden_dim"])
        self.LayerNorm = nn.LayerNorm(config["hidden_dim"], eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["dropout"])
        self.register_buffer("words", None if words is None else torch.tensor(words),
                             persistent=False)

    def forward(self, tokens, positions):
        """Embeddings (B, n, D) of ``tokens`` (B, n) at ``positions`` (n,), a tensor, so that a
        captured decoding step can read its position from the device."""
        if self.words is not None:
            rows = torch.searchsorted(self.words, tokens.contiguous())
            rows = rows.clamp(max=len(self.words) - 1)
            tokens = rows.masked_fill(self.words[rows] != tokens, self.word_embeddings.padding_idx)
        return self.dropout(self.LayerNorm(self.word_embeddings(tokens)
                                           + self.position_embeddings(positions)))


class Decoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(config["hidden_dim"], config["nheads"], config["dim_feedforward"],
                         config["dropout"], config["pre_norm"])
            for _ in range(config["dec_layers"]))
        self.norm = nn.LayerNorm(config["hidden_dim"])


class Transformer(nn.Module):
    def __init__(self, config, words=None):
        super().__init__()
        self.encoder = Encoder(config)
        self.embeddings = DecoderEmbeddings(config, words)
        self.decoder = Decoder(config)


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


# ---------------------------------------------------------------------------------------------
# The captioner


class EncodedImages:
    """Encoder output for a batch: memory and positions (B, h*w, D), padding mask (B, h, w)."""

    def __init__(self, memory, pos, padding):
        self.memory, self.pos, self.padding = memory, pos, padding

    def grid_sizes(self):
        """Each image's own feature-map size (rows, columns), its padding left out."""
        rows = (~self.padding[:, :, 0]).sum(1).tolist()
        cols = (~self.padding[:, 0, :]).sum(1).tolist()
        return list(zip(rows, cols))


class Caption(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        backbone = Backbone(config["backbone"], config["dilation"], config["backbone_layer"],
                            config["backbone_norm"])
        self.backbone = Joiner(backbone, SinePositionEncoding(config["hidden_dim"] // 2))
        self.input_proj = nn.Conv2d(backbone.num_channels, config["hidden_dim"], kernel_size=1)
        # A model restricted to output_tokens keeps only the head rows of those words, and only
        # the word embeddings of those it reads (them, [PAD] and [CLS]): training then updates a
        # few dozen rows instead of 2 x 30,522. Its state dict is still CATR's (_VOCABULARY_ROWS).
        tokens = config["output_tokens"]
        words = None if tokens is None else sorted({config["pad_token_id"], START_ID, *tokens})
        self.transformer = Transformer(config, words)
        self.mlp = MLP(config["hidden_dim"], HEAD_HIDDEN_DIM,
                       config["vocab_size"] if tokens is None else len(tokens), 3)
        # Not in the state dict; the config carries the list.
        self.register_buffer("output_tokens", None if tokens is None else torch.tensor(tokens),
                             persistent=False)
        if tokens is not None:
            self.register_state_dict_post_hook(_rows_to_vocabulary)
            self.register_load_state_dict_pre_hook(_rows_from_vocabulary)

    @property
    def stride(self):
        """Image pixels per feature-map cell along each axis."""
        return self.backbone[0].stride

    def image_features(self, images, pixel_mask):
        """Projected backbone features, padding mask and positions, each (B, ., h, w)."""
        features, mask, pos = self.backbone(images, pixel_mask)
        return self.input_proj(features), mask, pos

    def encode(self, features, mask, pos):
        """Run the encoder over feature maps as returned by ``image_features``."""
        memory = self.transformer.encoder(features.flatten(2).transpose(1, 2),
                                          pos.flatten(2).transpose(1, 2), mask.flatten(1))
        return EncodedImages(memory, pos.flatten(2).transpose(1, 2), mask)

    def start_decoding(self, encoded, static_length=None):
        """A DecoderState for ``encoded``, its image keys and values computed once per layer.

        With ``static_length``, a StaticDecoderState: the self-attention keys and values
        preallocated to that many positions, for decode_step.
        """
        if static_length is None:
            layers = [LayerCache(*layer.memory_keys_values(encoded.memory, encoded.pos))
                      for layer in self.transformer.decoder.layers]
            return DecoderState(layers, encoded.padding.flatten(1))
        position = torch.zeros((), dtype=torch.long, device=encoded.memory.device)
        layers = [StaticLayerCache(*layer.memory_keys_values(encoded.memory, encoded.pos),
                                   static_length, position)
                  for layer in self.transformer.decoder.layers]
        return StaticDecoderState(layers, encoded.padding.flatten(1), position, static_length)

    def decode(self, state, tokens, caption_padding=None, attention_layers=(), restricted=False):
        """Logits (B, n, vocab) for the ``tokens`` (B, n) that follow the positions in ``state``.

        ``caption_padding`` (B, n), True on padding, masks keys as CATR's caption mask does.
        ``attention_layers`` (decoder layer indices, negative counts from the end) asks for those
        layers' cross-attention weights, all from this one pass: (B, len(attention_layers),
        heads, n, h*w) in the order asked; None when it is empty.
        """
        start, n = state.length, tokens.shape[1]
        if start + n > self.config["max_position_embeddings"]:
            raise ValueError(f"captions are limited to {self.config['max_position_embeddings']} "
                             "positions")
        positions = torch.arange(start, start + n, device=tokens.device)
        # query i (at position start + i) sees the positions up to its own
        self_allowed = torch.ones(n, start + n, dtype=torch.bool, device=tokens.device).tril(start)
        if caption_padding is not None:
            past = caption_padding.new_zeros(caption_padding.shape[0], start)
            self_allowed = self_allowed & ~torch.cat((past, caption_padding), 1)[:, None, None]
        state.length += n
        return self._decoder(state, tokens, positions, self_allowed, attention_layers, restricted)

    def decode_step(self, state, tokens, attention_layers=()):
        """decode() of one token per row, ``tokens`` (B,), at ``state.position`` of a state
        started with ``static_length``, which then moves on by one. Fixed shapes and no host
        sync, so that it can be captured as a CUDA graph. Returns logits (B, vocab) and the
        cross-attention (B, len(attention_layers), heads, h*w) or None."""
        positions = state.position.view(1)
        # (1 query, every preallocated position): those after this one hold nothing yet
        self_allowed = (torch.arange(state.static_length, device=tokens.device)
                        <= state.position)[None]
        logits, attention = self._decoder(state, tokens[:, None], positions, self_allowed,
                                          attention_layers)
        state.position += 1
        return logits[:, 0], None if attention is None else attention[:, :, :, 0]

    def _decoder(self, state, tokens, positions, self_allowed, attention_layers, restricted=False):
        embeddings = self.transformer.embeddings
        t = embeddings(tokens, positions)
        query_pos = embeddings.position_embeddings(positions)
        memory_allowed = ~state.memory_padding[:, None, None]
        layers = self.transformer.decoder.layers
        # a range counts negative indices from the end and raises IndexError past either end
        wanted = [range(len(layers))[i] for i in attention_layers]
        weights = {}
        for i, (layer, cache) in enumerate(zip(layers, state.layers)):
            t, weights[i] = layer(t, query_pos, cache, self_allowed, memory_allowed,
                                  need_weights=i in wanted)
        attention = torch.stack([weights[i] for i in wanted], 1) if wanted else None
        return self.head(self.transformer.decoder.norm(t), restricted), attention

    def head(self, hidden, restricted=False):
        """Logits over the whole vocabulary. A model with output_tokens scores only those (the
        others are -inf); with ``restricted`` it returns just their scores,
        (..., len(output_tokens)), which is all a training loss needs: 30,522 columns would be
        most of a small captioner's step."""
        scores = self.mlp(hidden)
        if self.output_tokens is None or restricted:
            return scores
        logits = scores.new_full((*scores.shape[:-1], self.config["vocab_size"]), float("-inf"))
        return logits.index_copy(-1, self.output_tokens, scores)

    def forward(self, images, pixel_mask, caption, caption_padding, restricted=False):
        """CATR's forward pass: logits (B, L, vocab) for a whole caption buffer; ``restricted``
        as in head()."""
        encoded = self.encode(*self.image_features(images, pixel_mask))
        state = self.start_decoding(encoded)
        return self.decode(state, caption, caption_padding, restricted=restricted)[0]


# The parameters with one row per vocabulary word: (state-dict key, the Caption attribute path
# of the token ids whose rows a restricted model keeps)
_VOCABULARY_ROWS = (
    ("mlp.layers.2.weight", "output_tokens"),
    ("mlp.layers.2.bias", "output_tokens"),
    ("transformer.embeddings.word_embeddings.weight", "transformer.embeddings.words"))


def _rows_to_vocabulary(model, state_dict, prefix, local_metadata):
    """State-dict hook of a restricted model: each kept row placed at its token id in CATR's
    vocabulary-sized parameter; the rows of other words are zeros."""
    for key, ids in _VOCABULARY_ROWS:
        rows = state_dict[prefix + key]
        ids = model.get_buffer(ids).to(rows.device)
        full = rows.new_zeros((model.config["vocab_size"], *rows.shape[1:]))
        state_dict[prefix + key] = full.index_copy(0, ids, rows)


def _rows_from_vocabulary(model, state_dict, prefix, *args):
    """Load hook of a restricted model: from a vocabulary-sized parameter, the rows it keeps."""
    for key, ids in _VOCABULARY_ROWS:
        value = state_dict.get(prefix + key)
        if value is not None and value.shape[0] == model.config["vocab_size"]:
            state_dict[prefix + key] = value[model.get_buffer(ids).to(value.device)]


def build_model(config=None):
    """A randomly initialised Caption model (CATR's configuration by default), in eval mode."""
    return Caption(make_config(config)).eval()


def save_captioner(model, path):
    """Save in this project's format, {'format', 'config', 'model'}, atomically."""
    save_checkpoint({"format": format_tag("hw3-p2-catr"), "config": model.config,
                     "model": model.state_dict()}, path)


def load_captioner(path):
    """(model, config) from a released CATR checkpoint, a bare state dict or a project checkpoint.

    Checkpoints without a stored config are CATR's. Raises UserError when the file is missing,
    not a checkpoint, or holds another model's weights.
    """
    obj = load_checkpoint(path)
    check_format(obj, "hw3-p2-catr", path)
    stored = obj.get("config") if isinstance(obj, dict) else None
    config = make_config(stored if isinstance(stored, dict) else None)
    state_dict = unwrap_state_dict(obj, path)
    model = build_model(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        examples = ", ".join((missing + unexpected)[:3])
        raise UserError(f"{path} is not a CATR checkpoint ({len(missing)} keys missing, "
                        f"{len(unexpected)} unexpected, e.g. {examples})")
    wrong = [k for k, v in state_dict.items() if v.shape != expected[k].shape]
    if wrong:
        raise UserError(f"{path} does not match its CATR configuration ({len(wrong)} tensor(s) of "
                        f"the wrong shape, e.g. {wrong[0]}: {tuple(state_dict[wrong[0]].shape)} "
                        f"instead of {tuple(expected[wrong[0]].shape)})")
    model.load_state_dict(state_dict, strict=True)
    return model, config
