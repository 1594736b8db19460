"""Figures that explain a Problem 1 classifier: position-embedding similarity and [CLS] attention.

    python p1/visualize.py posemb --checkpoint runs/vit/best.pt --out figures/posemb.png
    python p1/visualize.py attention --checkpoint runs/vit/best.pt \
        --images p1_data/val/26_5064.jpg p1_data/val/29_4718.jpg --out figures/attention

Checkpoints of p1/train.py and bare pytorch-pretrained-vit or timm state dicts are all accepted.
"""
import argparse
import math
from pathlib import Path

import numpy as np
import torch

from hw3core.errors import UserError, at_least, run_cli
from hw3core.figures import overlay_heatmap, plt, save_figure, show_image
from hw3core.files import require_writable_file, require_writable_folder, save_npy
from hw3core.images import (ImageFileDataset, collate_skip, or_skip, report_written,
                            require_distinct_stems, require_images, require_some_read)
from hw3core.runtime import pick_device
from p1.attention import (attention_rollout, block_index, cls_attention,
                          position_similarity)
from p1.data import eval_transform
from p1.model import load_classifier

MAP_CMAP = "jet"  # the overlay's colours, so the map panel and the overlay read the same way


# --- position embeddings ------------------------------------------------------------------------

def similarity_mosaic(similarity, gap=1):
    """Lay out (rows, cols, rows, cols) similarity maps as one image, tile [r, c] at row r,
    column c, tiles separated by ``gap`` NaN cells (drawn as background)."""
    rows, cols, tile_h, tile_w = similarity.shape
    padded = np.pad(np.asarray(similarity, dtype=np.float32),
                    ((0, 0), (0, 0), (0, gap), (0, gap)), constant_values=np.nan)
    mosaic = padded.transpose(0, 2, 1, 3).reshape(rows * (tile_h + gap), cols * (tile_w + gap))
    return mosaic[:rows * (tile_h + gap) - gap, :cols * (tile_w + gap) - gap]


def _tile_ticks(count, tile, gap):
    """Tick positions at the tile centres and 1-based labels, thinned out past ~25 tiles."""
    step = max(1, math.ceil(count / 25))
    indices = [i for i in range(count) if i % step == 0 or i == count - 1]
    return [i * (tile + gap) + (tile - 1) / 2 for i in indices], [str(i + 1) for i in indices]


def plot_position_similarity(similarity, title):
    """One imshow of the whole mosaic: 576 subplots for ViT-B/16 at 384 would take minutes."""
    rows, cols, tile_h, tile_w = similarity.shape
    gap = 1
    mosaic = similarity_mosaic(similarity, gap)
    longest = max(mosaic.shape)
    fig_w = 1.5 + 8.0 * mosaic.shape[1] / longest  # room on the right for the colour bar
    fig_h = 1.2 + 8.0 * mosaic.shape[0] / longest
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), layout="constrained")
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    image = ax.imshow(mosaic, cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    for axis, count, tile in ((ax.xaxis, cols, tile_w), (ax.yaxis, rows, tile_h)):
        positions, labels = _tile_ticks(count, tile, gap)
        axis.set_ticks(positions, labels, fontsize=8 if count <= 16 else 6)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.6, aspect=30, label="cosine similarity")
    return fig


def run_posemb(args):
    require_writable_file(args.out)
    model, _, _ = load_classifier(args.checkpoint)
    similarity = position_similarity(model).numpy()
    rows, cols = similarity.shape[:2]
    title = (f"Position embedding similarity, {Path(args.checkpoint).name} ({rows} x {cols} patches)\n"
             "tile (r, c): cosine similarity of patch (r, c)'s embedding with every patch's")
    save_figure(plot_position_similarity(similarity, title), args.out, dpi=150)
    print(f"wrote {args.out}")


# --- attention maps -----------------------------------------------------------------------------

def collect_images(specs):
    """Image paths from files and folders. A path that does not exist (a typo) or a folder
    without images is a UserError; a named file that cannot be decoded is reported and skipped
    when it is read."""
    paths = []
    for spec in specs:
        spec = Path(spec)
        if spec.is_dir() or not spec.exists():
            paths += require_images(spec)
        else:
            paths.append(spec)
    require_distinct_stems(paths)
    return paths


def as_block_index(layer, model):
    """--layer (0 the first block, negative from the end, as p2/visualize.py counts) as a
    block index."""
    depth = len(model.blocks)
    try:
        return block_index(model, layer)
    except ValueError:
        raise UserError(f"--layer {layer}: the model has {depth} blocks, 0 to {depth - 1} "
                        f"(or -{depth} to -1 from the end)") from None


def describe_map(args, block, depth, heads):
    if args.method == "rollout":
        return f"attention rollout over all {depth} layers\n[CLS] row, patch columns"
    which = "last layer" if block == depth - 1 else "layer"
    head_text = f"mean of {heads} heads" if args.heads == "mean" else f"{heads} heads"
    return f"[CLS] attention to patches\n{which} {block} of 0-{depth - 1}, {head_text}"


def unnormalise(images, mean, std):
    """The network's input tensors back as (B, H, W, 3) RGB in [0, 1]."""
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    return (images.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _panel_width(image):
    return 4.0 * image.shape[1] / image.shape[0]


def plot_single_map(image, heat, map_title, heading):
    height, width = image.shape[:2]
    panel = _panel_width(image)
    fig, (ax_image, ax_map, ax_overlay) = plt.subplots(
        1, 3, figsize=(3 * panel + 1.2, 4.8), layout="constrained")
    show_image(ax_image, image, f"input as the model saw it\n({height} x {width} pixels)")
    # The map's own range: attention is often nearly uniform, and a scale from 0 would hide
    # where it is highest. The colour bar gives the actual weights.
    vmin, vmax = float(heat.min()), float(heat.max())
    artist = ax_map.imshow(heat, cmap=MAP_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest",
                           extent=(0, width, height, 0))
    ax_map.set_axis_off()
    ax_map.set_title(map_title)
    fig.colorbar(artist, ax=ax_map, shrink=0.8, label="attention weight")
    overlay_heatmap(ax_overlay, image, heat, title="the map over the input", cmap=MAP_CMAP,
                    vmin=vmin, vmax=vmax)
    fig.suptitle(heading, fontsize="x-large")
    return fig


def plot_on_original(original, heat, map_title, heading):
    """The photo at its own aspect ratio on the left; on the right the map over it, one cell per
    patch. The model's input is a plain resize of the photo, so patch (r, c) covers the same
    share of the photo: the cells are stretched with it and their edges fall on the patches'."""
    original = np.asarray(original)
    panel = _panel_width(original)
    fig, (ax_photo, ax_map) = plt.subplots(1, 2, figsize=(2 * panel + 1.2, 4.6),
                                           layout="constrained")
    show_image(ax_photo, original,
               f"original ({original.shape[0]} x {original.shape[1]} pixels)")
    artist = overlay_heatmap(ax_map, original, heat, title=map_title, cmap=MAP_CMAP,
                             vmin=float(heat.min()), vmax=float(heat.max()),
                             interpolation="nearest")
    fig.colorbar(artist, ax=ax_map, shrink=0.8, label="attention weight")
    fig.suptitle(heading, fontsize="large")
    return fig


def plot_head_maps(image, heads_maps, map_title, heading):
    """The image, the mean over heads and each head's map, on one shared colour scale."""
    height, width = image.shape[:2]
    panels = [("mean over heads", heads_maps.mean(axis=0))]
    panels += [(f"head {h + 1}", m) for h, m in enumerate(heads_maps)]
    cols = min(5, len(panels) + 1)
    rows = math.ceil((len(panels) + 1) / cols)
    panel = 0.75 * _panel_width(image)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel + 1.2, rows * 3.0 + 1.0),
                             layout="constrained", squeeze=False)
    axes = axes.ravel()
    show_image(axes[0], image, f"input as the model saw it\n({height} x {width} pixels)")
    vmin, vmax = float(heads_maps.min()), float(heads_maps.max())
    for ax, (title, heat) in zip(axes[1:], panels):
        artist = ax.imshow(heat, cmap=MAP_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest",
                           extent=(0, width, height, 0))
        ax.set_title(title)
        ax.set_axis_off()
    for ax in axes[len(panels) + 1:]:
        ax.set_visible(False)
    fig.colorbar(artist, ax=list(axes), shrink=0.6, label="attention weight")
    fig.suptitle(f"{heading}\n{map_title.replace(chr(10), ', ')}", fontsize="x-large")
    return fig


def run_attention(args):
    if args.method == "rollout" and args.heads == "all":
        raise UserError("rollout averages the heads by definition: --heads all needs --method last")
    if args.method == "rollout" and args.layer is not None:
        raise UserError("rollout runs through all layers: --layer needs --method last")
    paths = collect_images(args.images)
    out = require_writable_folder(args.out)
    model, preprocess, class_names = load_classifier(args.checkpoint)
    depth = len(model.blocks)
    block = as_block_index(-1 if args.layer is None else args.layer, model)
    device = pick_device(args.device)
    model.to(device).eval()
    dataset = ImageFileDataset(paths, eval_transform(
        preprocess["image_size"], preprocess["mean"], preprocess["std"]))
    loader = torch.utils.data.DataLoader(dataset, args.batch_size, collate_fn=collate_skip)
    map_title = describe_map(args, block, depth, model.blocks[block].attn.num_heads)

    def write(path, image, heat, prob):
        predicted = int(prob.argmax())
        heading = f"{path.name}: predicted class {class_names[predicted]} ({prob[predicted]:.1%})"
        plot = plot_head_maps if heat.ndim == 3 else plot_single_map
        save_figure(plot(image, heat, map_title, heading), out / f"{path.stem}.png")
        if args.save_npy:
            save_npy(heat, out / f"{path.stem}.npy")
        return True  # or_skip gives None when this fails

    written = 0
    for batch in loader:
        if batch is None:
            continue
        images, indices = batch
        images = images.to(device)
        if args.method == "rollout":
            maps, logits = attention_rollout(model, images, with_logits=True)
        else:
            maps, logits = cls_attention(model, images, block, with_logits=True)
            if args.heads == "mean":
                maps = maps.mean(dim=1)
        probs = logits.float().softmax(dim=-1).cpu()
        shown = unnormalise(images, preprocess["mean"], preprocess["std"])
        for image, heat, prob, index in zip(shown, maps.float().cpu().numpy(), probs, indices):
            path = paths[int(index)]
            written += bool(or_skip(path, lambda: write(path, image, heat, prob)))
    require_some_read(written, paths, ", ".join(map(str, args.images)))
    report_written(written, paths, "figure(s)", out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pos = sub.add_parser("posemb", help="cosine similarity of the position embeddings")
    pos.add_argument("--checkpoint", required=True, help="train.py checkpoint or ViT state dict")
    pos.add_argument("--out", required=True, help="the PNG to write")
    att = sub.add_parser("attention", help="[CLS] attention maps, one PNG per image")
    att.add_argument("--checkpoint", required=True, help="train.py checkpoint or ViT state dict")
    att.add_argument("--images", required=True, nargs="+", metavar="FILE_OR_DIR",
                     help="image files and/or folders of images")
    att.add_argument("--out", required=True, help="folder for OUT/<image stem>.png")
    att.add_argument("--method", choices=("last", "rollout"), default="last",
                     help="last: softmax attention of one layer (the report's); rollout: "
                          "attention rollout through all layers")
    att.add_argument("--heads", choices=("mean", "all"), default="mean",
                     help="mean over heads, or one map per head")
    att.add_argument("--layer", type=int,
                     help="with --method last: the block, 0 the first, -1 the last (default: "
                     "the last), as p2/visualize.py counts decoder layers")
    att.add_argument("--save-npy", action="store_true",
                     help="also write OUT/<stem>.npy: (rows, cols), or (heads, rows, cols)")
    att.add_argument("--batch-size", type=at_least(1), default=8)
    att.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    {"posemb": run_posemb, "attention": run_attention}[args.command](args)


if __name__ == "__main__":
    run_cli(main)
