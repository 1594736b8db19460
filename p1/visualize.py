"""Figures that explain a Problem 1 classifier: position-embedding similarity and [CLS] attention.

    python p1/visualize.py posemb --checkpoint runs/vit/best.pt --out figures/posemb.png
    python p1/visualize.py attention --checkpoint runs/vit/best.pt \
        --images p1_data/val/26_5064.jpg p1_data/val/29_4718.jpg --out figures/attention

Checkpoints of p1/train.py and bare pytorch-pretrained-vit or timm state dicts are all accepted.
"""
import os
from pathlib import Path

from hw3core.cli import add_device_options, at_least, layer_option, parser, run_cli
from hw3core.errors import UserError
from hw3core.figures import save_figure
from hw3core.files import require_writable_file, require_writable_folder, save_npy
from hw3core.images import (ImageFileDataset, collate_skip, or_skip, report_written,
                            require_images, require_outputs_apart, require_some_read)

# torch, timm and what needs them are imported inside the functions that use them: --help and
# argument errors answer at once, and a Ctrl-C while they load is one line (run_cli)


# --- position embeddings ------------------------------------------------------------------------

def run_posemb(args):
    if Path(args.out).suffix.lower() != ".png":
        raise UserError(f"--out {args.out}: the figure is a PNG; give a name ending in .png")
    require_writable_file(args.out)
    from p1.attention import position_similarity
    from p1.figures import plot_position_similarity
    from p1.model import load_classifier

    model, _, _ = load_classifier(args.checkpoint)
    similarity = position_similarity(model).numpy()
    rows, cols = similarity.shape[:2]
    title = (f"Position embedding similarity, {Path(args.checkpoint).name} "
             f"({rows} x {cols} patches)\n"
             "tile (r, c): cosine similarity of patch (r, c)'s embedding with every patch's")
    save_figure(plot_position_similarity(similarity, title), args.out, dpi=150)
    print(f"wrote {args.out}")


# --- attention maps -----------------------------------------------------------------------------

def collect_images(specs, out):
    """Image paths from files and folders, each with its own figure in ``out``. A path that does
    not exist (a typo) or a folder without images is a UserError; a named file that cannot be
    decoded is reported and skipped when it is read."""
    paths = {}  # by the file they are: an image named twice (itself and its folder) is drawn once
    for spec in specs:
        spec = Path(spec)
        for path in require_images(spec) if spec.is_dir() or not spec.exists() else [spec]:
            paths.setdefault(os.path.realpath(path), path)
    paths = list(paths.values())
    require_outputs_apart(paths, out)
    return paths


def describe_map(args, block, depth, heads):
    if args.method == "rollout":
        return f"attention rollout over all {depth} layers\n[CLS] row, patch columns"
    which = "last layer" if block == depth - 1 else "layer"
    head_text = f"mean of {heads} heads" if args.heads == "mean" else f"{heads} heads"
    return f"[CLS] attention to patches\n{which} {block} of 0-{depth - 1}, {head_text}"


def unnormalise(images, mean, std):
    """The network's input tensors back as (B, H, W, 3) RGB in [0, 1]."""
    import torch

    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    return (images.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def run_attention(args):
    if args.method == "rollout" and args.heads == "all":
        raise UserError("rollout averages the heads by definition: --heads all needs --method last")
    if args.method == "rollout" and args.layer is not None:
        raise UserError("rollout runs through all layers: --layer needs --method last")
    paths = collect_images(args.images, args.out)
    out = require_writable_folder(args.out)
    import torch

    from hw3core.runtime import pick_device
    from p1.attention import attended_tokens, attention_rollout, cls_attention
    from p1.data import eval_transform
    from p1.figures import plot_head_maps, plot_single_map, prediction_heading
    from p1.model import load_classifier

    model, preprocess, class_names = load_classifier(args.checkpoint)
    depth = len(model.blocks)
    block = layer_option(-1 if args.layer is None else args.layer, depth, "blocks")
    device = pick_device(args.device)
    model.to(device).eval()
    dataset = ImageFileDataset(paths, eval_transform(
        preprocess["image_size"], preprocess["mean"], preprocess["std"]))
    loader = torch.utils.data.DataLoader(dataset, args.batch_size, collate_fn=collate_skip)
    map_title = describe_map(args, block, depth, model.blocks[block].attn.num_heads)
    tokens = attended_tokens(model)

    def write(path, image, heat, prob):
        heading = prediction_heading(path, prob, class_names)
        plot = plot_head_maps if heat.ndim == 3 else plot_single_map
        save_figure(plot(image, heat, map_title, heading, tokens), out / f"{path.stem}.png")
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
    p = parser(__doc__)
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
    add_device_options(att)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    {"posemb": run_posemb, "attention": run_attention}[args.command](args)


if __name__ == "__main__":
    run_cli(main)
