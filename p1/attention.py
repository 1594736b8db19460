"""What the classifier attends to, and what its position table learned.

Attention matrices are formed only when asked for, DINO-style (``get_last_selfattention``): the
blocks run one by one, and for each requested block the explicit softmax(q k^T * scale) is
computed from that block's own modules on the input the block actually receives. The block's
output still comes from its own (fused) forward, so the logits are those of ``model(images)``.
No forward hooks are used: a hook on timm's fused attention sees no matrix at all.

Maps are (rows, columns) of the patch grid: ``grid_size(model)``, not assumed square. Prefix
tokens ([CLS] and any register tokens, ``model.num_prefix_tokens``) are left out of the key side.
"""
import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from p1.model import grid_size


def block_index(model, layer):
    """``layer`` as a non-negative block index; negative values count from the last block."""
    depth = len(model.blocks)
    if not -depth <= layer < depth:
        raise ValueError(f"layer {layer} does not exist: the model has {depth} blocks")
    return layer % depth


def _check_supported(model, indices):
    if not isinstance(model, VisionTransformer) or model.cls_token is None:
        raise TypeError("attention maps need a timm VisionTransformer with a [CLS] token")
    for i in indices:
        block = model.blocks[i]
        # Other block types (post-norm, parallel) feed the attention something other than
        # norm1(x), so the matrix formed here would not be the one the block uses.
        if type(block) is not Block or not isinstance(block.attn, Attention):
            raise TypeError(f"block {i} is a {type(block).__name__} with "
                            f"{type(block.attn).__name__}; only timm's Block/Attention are "
                            "supported")


def block_attention(block, x):
    """softmax(q k^T * scale) of ``block`` for its input ``x`` (B, N, C): (B, heads, N, N).

    Attention dropout is not applied: this is the matrix an eval-mode forward uses.
    """
    attn = block.attn
    batch, tokens, _ = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def _walk(model, images, indices, visit):
    """Run ``model`` on ``images`` block by block, handing ``visit(index, attention)`` the
    attention of each block in ``indices``. Returns (logits, patch grid of this input)."""
    _check_supported(model, indices)
    x = model.patch_embed(images)
    # A model built with dynamic_img_size keeps the grid as (B, rows, columns, C).
    grid = tuple(x.shape[1:3]) if x.ndim == 4 else grid_size(model)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    for i, block in enumerate(model.blocks):
        if i in indices:
            visit(i, block_attention(block, x))
        x = block(x)
    return model.forward_head(model.norm(x)), grid


def cls_patch_attention(attention, num_prefix_tokens, grid):
    """The [CLS] row's patch columns of attention (..., N, N), as (..., rows, columns)."""
    rows, cols = grid
    return attention[..., 0, num_prefix_tokens:].reshape(*attention.shape[:-2], rows, cols)


def attended_tokens(model):
    """How many tokens a query attends over, prefix tokens included: attention spread evenly
    gives each patch 1 / this, the level at which a map singles nothing out."""
    rows, cols = grid_size(model)
    return model.num_prefix_tokens + rows * cols


@torch.no_grad()
def cls_attention(model, images, layer=-1, with_logits=False):
    """Attention of [CLS] (query) to every patch (keys) in block ``layer``: (B, heads, rows, cols).

    With ``with_logits``, returns (maps, logits) from the same forward pass.
    """
    index = block_index(model, layer)
    found = {}
    logits, grid = _walk(model, images, {index}, found.__setitem__)
    maps = cls_patch_attention(found[index], model.num_prefix_tokens, grid)
    return (maps, logits) if with_logits else maps


@torch.no_grad()
def attention_rollout(model, images, with_logits=False):
    """Attention rollout (Abnar and Zuidema, 2020) read at [CLS]: (B, rows, cols).

    Per block: mean over heads, plus the identity for the residual path, rows renormalised; the
    blocks' matrices are multiplied from the first to the last (later blocks on the left). The
    product is accumulated as the blocks run, so only one N x N matrix per image is kept.
    """
    rollout = None

    def accumulate(_, attention):
        nonlocal rollout
        mixed = attention.mean(dim=1)
        mixed = mixed + torch.eye(mixed.shape[-1], dtype=mixed.dtype, device=mixed.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout

    logits, grid = _walk(model, images, set(range(len(model.blocks))), accumulate)
    maps = cls_patch_attention(rollout, model.num_prefix_tokens, grid)
    return (maps, logits) if with_logits else maps


@torch.no_grad()
def position_similarity(model):
    """Cosine similarity of every patch's position embedding with every other's.

    Returns (rows, cols, rows, cols): entry [r, c] is the map of patch (r, c) against all
    patches. The prefix tokens' rows of the table are left out.
    """
    table = model.pos_embed[0]
    if not model.no_embed_class:  # the table then starts with the prefix tokens' rows
        table = table[model.num_prefix_tokens:]
    rows, cols = grid_size(model)
    unit = F.normalize(table.float(), dim=-1)
    return (unit @ unit.T).reshape(rows, cols, rows, cols)
