"""The classifier: timm's VisionTransformer, built from a preset (p1.presets) or a timm name,
and the weight formats it reads and writes.

Architectures are described by a small ``arch`` dict stored in every checkpoint, so a model is
rebuilt exactly from its checkpoint. Weights come as this project's checkpoints, bare timm state
dicts, or pytorch-pretrained-vit state dicts (B_16_imagenet1k.pth), recognised by their keys.
"""
import math
import re

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from hw3core.errors import UserError
from p1.presets import PRESETS

DEFAULT_MEAN = DEFAULT_STD = (0.5, 0.5, 0.5)


def as_pair(size):
    """(height, width) from an int, a one-element or a two-element sequence."""
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    return size * 2 if len(size) == 1 else size


def make_arch(name, num_classes, image_size=None):
    """The architecture description for a preset or any timm ViT name."""
    if name in PRESETS:
        vit_kwargs = dict(PRESETS[name])
        image_size = as_pair(image_size or vit_kwargs["img_size"])
        vit_kwargs["img_size"] = list(image_size)
    else:
        if name not in timm.list_models("*vit*") and name not in timm.list_models("*deit*"):
            raise UserError(f"unknown model {name!r}: use one of {sorted(PRESETS)} or a timm "
                            "ViT name")
        vit_kwargs = None
        with torch.device("meta"):  # its description only: no weights made or initialised
            model = _require_cls_vit(timm.create_model(name, pretrained=False), name)
        image_size = as_pair(image_size or model.default_cfg["input_size"][1:])
        patch = model.patch_embed.patch_size
    if vit_kwargs is not None:
        patch = as_pair(vit_kwargs["patch_size"])
    if any(side % p for side, p in zip(image_size, patch)):
        # the patch embedding would leave the pixels past the last whole patch unseen
        fitted = [math.ceil(side / p) * p for side, p in zip(image_size, patch)]
        raise UserError(f"--image-size {' '.join(map(str, image_size))} is not a whole number of "
                        f"{name}'s {patch[0]} x {patch[1]} pixel patches: use "
                        f"{' '.join(map(str, fitted))}")
    return {"name": name, "num_classes": int(num_classes), "image_size": list(image_size),
            "vit_kwargs": vit_kwargs}


def build_model(arch, drop_path=0.0):
    """A VisionTransformer for ``arch``; attention runs through the fused SDPA kernel."""
    if arch["vit_kwargs"] is not None:
        kwargs = dict(arch["vit_kwargs"], img_size=tuple(arch["image_size"]))
        model = VisionTransformer(num_classes=arch["num_classes"], drop_path_rate=drop_path,
                                  **kwargs)
    else:
        model = _require_cls_vit(
            timm.create_model(arch["name"], pretrained=False, num_classes=arch["num_classes"],
                              img_size=tuple(arch["image_size"]), drop_path_rate=drop_path),
            arch["name"])
    return model


def _require_cls_vit(model, name):
    """``model``, if it is a VisionTransformer with a [CLS] token, the maps' query (not LeViT,
    MobileViT and the like, whose names say vit too)."""
    if not isinstance(model, VisionTransformer) or model.cls_token is None:
        raise UserError(f"{name} is not a timm VisionTransformer with a [CLS] token")
    return model


def grid_size(model):
    """(rows, columns) of patches: image size divided by patch size, per side."""
    return tuple(model.patch_embed.grid_size)


# --- weight formats -----------------------------------------------------------------------------

_PPVIT_BLOCK = re.compile(r"transformer\.blocks\.(\d+)\.(.+)")
_PPVIT_RENAMES = {"proj": "attn.proj", "norm1": "norm1", "norm2": "norm2",
                  "pwff.fc1": "mlp.fc1", "pwff.fc2": "mlp.fc2"}
_PPVIT_TOP = {"patch_embedding": "patch_embed.proj", "class_token": "cls_token",
              "positional_embedding.pos_embedding": "pos_embed", "norm": "norm", "fc": "head"}


def is_ppvit_state_dict(state_dict):
    return "patch_embedding.weight" in state_dict


def ppvit_to_timm(state_dict):
    """Rename pytorch-pretrained-vit keys to timm's; q, k, v are concatenated into qkv."""
    out, qkv = {}, {}
    for key, value in state_dict.items():
        block = _PPVIT_BLOCK.fullmatch(key)
        if block:
            index, rest = block.groups()
            part = re.fullmatch(r"attn\.proj_([qkv])\.(weight|bias)", rest)
            if part:
                qkv.setdefault((index, part.group(2)), {})[part.group(1)] = value
                continue
            module, param = rest.rsplit(".", 1)
            if module not in _PPVIT_RENAMES:
                raise UserError(f"unexpected pytorch-pretrained-vit key {key}")
            out[f"blocks.{index}.{_PPVIT_RENAMES[module]}.{param}"] = value
            continue
        module, _, param = key.rpartition(".")
        if key in _PPVIT_TOP:  # parameters without a module suffix
            out[_PPVIT_TOP[key]] = value
        elif module in _PPVIT_TOP:
            out[f"{_PPVIT_TOP[module]}.{param}"] = value
        else:
            raise UserError(f"unexpected pytorch-pretrained-vit key {key}")
    for (index, param), parts in qkv.items():
        out[f"blocks.{index}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def timm_to_ppvit(state_dict):
    """The inverse of ``ppvit_to_timm``: a state dict that pytorch_pretrained_vit.ViT loads."""
    top = {v: k for k, v in _PPVIT_TOP.items()}
    renames = {v: k for k, v in _PPVIT_RENAMES.items()}
    out = {}
    for key, value in state_dict.items():
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if block:
            index, module, param = block.groups()
            if module == "attn.qkv":
                for name, chunk in zip("qkv", value.chunk(3)):
                    out[f"transformer.blocks.{index}.attn.proj_{name}.{param}"] = chunk.clone()
            elif module in renames:
                out[f"transformer.blocks.{index}.{renames[module]}.{param}"] = value
            else:
                raise UserError(f"{key} has no pytorch-pretrained-vit counterpart")
            continue
        module, _, param = key.rpartition(".")
        if key in top:
            out[top[key]] = value
        elif module in top:
            out[f"{top[module]}.{param}"] = value
        else:
            raise UserError(f"{key} has no pytorch-pretrained-vit counterpart")
    return out


def infer_arch(state_dict):
    """Rebuild the architecture of a bare timm-key ViT state dict from its tensor shapes.

    Shapes do not record the number of heads; ViTs use 64-dimensional heads, so dim / 64 is taken.
    A bare state dict does not record a non-square input either: its grid is taken as square.
    """
    try:
        patch = state_dict["patch_embed.proj.weight"].shape[-2:]
        tokens, dim = state_dict["pos_embed"].shape[-2:]
        num_classes = state_dict["head.weight"].shape[0]
        hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as err:
        raise UserError(f"not a ViT state dict: key {err.args[0]} is missing") from None
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    side = math.isqrt(tokens - 1)
    if side * side != tokens - 1:
        raise UserError(f"cannot infer the input size from {tokens - 1} position rows: a bare "
                        "state dict does not record a non-square grid; give the train.py "
                        "checkpoint it was exported from")
    image_size = [side * patch[0], side * patch[1]]
    vit_kwargs = dict(img_size=image_size, patch_size=list(patch), embed_dim=dim, depth=depth,
                      num_heads=max(1, dim // 64), mlp_ratio=hidden / dim)
    return {"name": "inferred", "num_classes": num_classes, "image_size": image_size,
            "vit_kwargs": vit_kwargs}


def to_timm_keys(state_dict):
    return ppvit_to_timm(state_dict) if is_ppvit_state_dict(state_dict) else dict(state_dict)


def load_weights(model, state_dict, source, old_grid=None):
    """Load timm- or pytorch-pretrained-vit-keyed weights into ``model`` to start fine-tuning.

    A head of another class count is left out (the model keeps its fresh head); a position table
    of another grid is resampled to the model's grid. Every other key must match. Returns the list
    of what was adapted, for the log.
    """
    state_dict = to_timm_keys(state_dict)
    own = model.state_dict()
    adapted = []
    if "head.weight" in state_dict and state_dict["head.weight"].shape != own["head.weight"].shape:
        old = state_dict.pop("head.weight").shape[0]
        state_dict.pop("head.bias", None)
        adapted.append(f"new head: {old} -> {own['head.weight'].shape[0]} classes")
    pos = state_dict.get("pos_embed")
    if pos is not None and old_grid is None and pos.shape != own["pos_embed"].shape:
        # a bare state dict says nothing of its grid: square, as ViTs ship
        cells = pos.shape[1] - model.num_prefix_tokens
        side = math.isqrt(cells)
        if side * side != cells:
            raise UserError(f"{source}: its position table of {cells} cells is no square grid, "
                            "and a bare state dict does not say which grid it is: start from a "
                            "checkpoint of this project (p1/train.py's) instead")
        old_grid = (side, side)
    # by grid, not by shape: 3 x 12 positions are as many as 6 x 6, yet not the same
    if pos is not None and old_grid is not None and tuple(old_grid) != grid_size(model):
        state_dict["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=list(grid_size(model)), old_size=list(old_grid),
            num_prefix_tokens=model.num_prefix_tokens)
        adapted.append(f"position table resampled: {tuple(old_grid)} -> {grid_size(model)} grid")
    missing = [k for k in own if k not in state_dict and not k.startswith("head.")]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in state_dict if k in own and state_dict[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        problems = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                    (("missing keys", missing), ("unexpected keys", unexpected),
                     ("shape mismatches", wrong)) if v]
        raise UserError(f"{source} does not fit {model.__class__.__name__}: " + ", ".join(problems))
    model.load_state_dict(state_dict, strict=False)
    return adapted


def forward_flops_per_image(model):
    """Multiply-adds x 2 of one forward pass: patch embedding, every block, the head.

    Per block and token: qkv and output projections (8 d^2), MLP (2 d h), attention scores and
    weighted sum (4 N d). Norms, softmax and GELU are left out, as in nanoGPT's MFU estimate.
    """
    gh, gw = grid_size(model)
    tokens = gh * gw + model.num_prefix_tokens
    dim = model.embed_dim
    hidden = model.blocks[0].mlp.fc1.out_features
    patch = model.patch_embed.proj.weight[0].numel()
    per_block = tokens * (8 * dim * dim + 4 * dim * hidden) + 4 * tokens * tokens * dim
    return (2 * gh * gw * patch * dim + len(model.blocks) * per_block
            + 2 * dim * model.num_classes)


def _saved_records(obj, path):
    """(preprocess, class_names) of a train.py checkpoint, checked against its arch: an edited
    or incomplete one is a UserError naming ``path``, not a failure in the middle of a run."""
    try:
        arch, preprocess = obj["arch"], dict(obj["preprocess"])
        class_names = [str(name) for name in obj["class_names"]]
        size, classes = list(arch["image_size"]), int(arch["num_classes"])
        shapes = [len(preprocess["image_size"]), len(preprocess["mean"]), len(preprocess["std"])]
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path} is not a whole Problem 1 checkpoint: "
                        f"{type(err).__name__} {err} in its arch, preprocess or class_names"
                        ) from None
    if len(class_names) != classes:
        raise UserError(f"{path}: {len(class_names)} class names for a head of {classes} classes")
    if shapes != [2, 3, 3] or list(preprocess["image_size"]) != size:
        raise UserError(f"{path}: its preprocess record (image_size, mean, std) does not fit its "
                        f"model's {size[0]} x {size[1]} RGB input")
    return preprocess, class_names


def load_classifier(path):
    """(model, preprocess, class_names) from a train.py checkpoint or a bare ViT state dict.

    A bare pytorch-pretrained-vit or timm state dict has no class names (its labels are the
    model's own class ids) and no preprocessing record (B_16_imagenet1k's mean and std of 0.5 and
    its square input size, read off the position table, are used).
    """
    from hw3core.checkpoints import check_format, load_checkpoint, unwrap_state_dict

    obj = load_checkpoint(path)
    check_format(obj, "hw3-p1-vit", path)
    if isinstance(obj, dict) and "arch" in obj and "model" in obj:
        preprocess, class_names = _saved_records(obj, path)
        try:
            model = build_model(obj["arch"])
            model.load_state_dict(obj["model"])
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as err:
            raise UserError(f"{path}: its arch and model do not make a ViT "
                            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                            ) from None
        return model, preprocess, class_names
    state_dict = to_timm_keys(unwrap_state_dict(obj, path))
    try:
        arch = infer_arch(state_dict)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    model = build_model(arch)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise UserError(f"{path} does not fit a ViT: {str(err).splitlines()[0]}") from None
    preprocess = {"image_size": arch["image_size"], "mean": list(DEFAULT_MEAN),
                  "std": list(DEFAULT_STD)}
    return model, preprocess, [str(i) for i in range(arch["num_classes"])]
