"""Do Problem 1's attention maps point at the object? A check on synthetic shapes with known boxes.

    python bench/p1_attention.py 2>/dev/null      # tqdm bars go to stderr

Trains the tiny ViT preset on one-object images whose class is the object's colour (so the
model must find the object), then on held-out images measures, for each layer's [CLS] map
(mean over heads) and for attention rollout:
- pointing game: does the map's highest cell overlap the object's box?
- the same with a stricter rule: does the highest cell's centre lie inside the box?
- attention mass inside the box divided by the box's share of the image (1 = no preference).
Chance for a pointing rule is the accuracy of a uniformly random cell: the mean fraction of
cells that pass the rule. The last layer's measures are also given for two baselines of the
same network: untrained (random weights) and trained on shuffled labels (bench/results/
p1_attention.json). It also reports how the position embeddings' cosine similarity falls with
grid distance, after training and at initialisation.
"""
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from bench.measure import cell_geometry, machine, write_result
from bench.tables import P1_TARGET_POINTING, RENDERERS
from hw3core.cli import parser, run_cli
from hw3core.images import ImageFileDataset, collate_skip, list_images
from hw3core.training import replace_run
from p1.attention import attention_rollout, cls_attention, position_similarity
from p1.data import eval_transform, make_shapes_set
from p1.engine import fit
from p1.model import build_model, load_classifier
from p1.train import parse_args as parse_train_args


def score_map(heat, image_size, box):
    """Pointing hits (overlap rule, centre rule), their chance levels, and the mass ratio."""
    height, width = image_size
    overlap, centre, _ = cell_geometry(heat.shape, (height / heat.shape[0], width / heat.shape[1]),
                                       box)
    best = np.unravel_index(np.argmax(heat), heat.shape)
    cell_area = height * width / heat.size
    box_share = overlap.sum() / (height * width)
    mass_in_box = float((heat * overlap / cell_area).sum() / heat.sum())
    return {"hit": float(overlap[best] > 0), "hit_chance": float((overlap > 0).mean()),
            "centre_hit": float(centre[best]), "centre_chance": float(centre.mean()),
            "mass_ratio": mass_in_box / box_share}


def similarity_by_distance(model):
    """{metric: {distance: mean cosine similarity over patch pairs at that distance}}."""
    sim = position_similarity(model).numpy()
    rows, cols = sim.shape[:2]
    sim = sim.reshape(rows * cols, rows * cols)
    r, c = np.divmod(np.arange(rows * cols), cols)
    dr, dc = np.abs(r[:, None] - r[None, :]), np.abs(c[:, None] - c[None, :])
    distances = {"Chebyshev": np.maximum(dr, dc), "Euclidean (rounded)": np.rint(np.hypot(dr, dc))}
    return {name: {int(d): float(sim[dist == d].mean()) for d in np.unique(dist) if d > 0}
            for name, dist in distances.items()}


def evaluate_maps(model, preprocess, class_names, folder, batch_size=64):
    """Per map kind ('layer k', 'rollout'), the mean of each score over the folder's images,
    plus the classification accuracy."""
    boxes = json.loads((folder / "boxes.json").read_text())
    paths = list_images(folder)
    height, width = preprocess["image_size"]
    loader = torch.utils.data.DataLoader(
        ImageFileDataset(paths, eval_transform((height, width), preprocess["mean"],
                                               preprocess["std"])),
        batch_size, collate_fn=collate_skip)
    depth = len(model.blocks)
    scores, correct = {}, 0
    for images, indices in loader:
        kinds = {f"layer {i + 1}": cls_attention(model, images, i).mean(dim=1)
                 for i in range(depth)}
        kinds["rollout"], logits = attention_rollout(model, images, with_logits=True)
        for row, index in enumerate(indices.tolist()):
            path = paths[index]
            label = class_names.index(path.name.split("_")[0])
            correct += int(logits[row].argmax()) == label
            x0, y0, x1, y1 = boxes[path.name]
            # Boxes are in the file's pixels; the model sees the image resized to its input.
            with Image.open(path) as img:
                original_w, original_h = img.size
            sy, sx = height / original_h, width / original_w
            box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
            for kind, maps in kinds.items():
                for key, value in score_map(maps[row].numpy(), (height, width), box).items():
                    scores.setdefault(kind, {}).setdefault(key, []).append(value)
    means = {kind: {key: float(np.mean(v)) for key, v in s.items()} for kind, s in scores.items()}
    return means, correct / len(paths)


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--work", help="folder for the data and the run (default: temporary)")
    p.add_argument("--train", type=int, default=2000, help="training images")
    p.add_argument("--heldout", type=int, default=300, help="held-out images for the maps")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--min-crop", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        run(args, Path(args.work or scratch))


def shuffled_copy(folder, out, seed):
    """``folder``'s images under labels shuffled among them (same images, same label counts):
    a model trained on it learns no colour, whatever its maps look like."""
    paths = list_images(folder)
    labels = np.random.default_rng(seed).permutation([p.name.split("_")[0] for p in paths])
    out.mkdir(parents=True, exist_ok=True)
    for path, label in zip(paths, labels):
        (out / f"{label}_{path.name.split('_', 1)[1]}").write_bytes(path.read_bytes())


def train(args, train_dir, val_dir, out):
    replace_run(out)  # a --work folder's earlier run
    fit(parse_train_args([
        "--model", "tiny", "--pretrained", "none", "--train-dir", str(train_dir),
        "--val-dir", str(val_dir), "--out", str(out), "--epochs", str(args.epochs),
        "--batch-size", "32", "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.05",
        "--workers", "0", "--augment", "none", "--min-crop", str(args.min_crop),
        "--drop-path", "0", "--seed", str(args.seed)]))


def run(args, work):
    image_side = 64
    make_shapes_set(work / "train", args.train, image_side, seed=args.seed)
    make_shapes_set(work / "val", 200, image_side, seed=args.seed + 1, start_id=args.train)
    make_shapes_set(work / "heldout", args.heldout, image_side, seed=args.seed + 2,
                    start_id=args.train + 200)
    start = time.perf_counter()
    train(args, work / "train", work / "val", work / "run")
    train_seconds = time.perf_counter() - start
    shuffled_copy(work / "train", work / "train_shuffled", args.seed + 3)
    train(args, work / "train_shuffled", work / "val", work / "run_shuffled")

    model, preprocess, class_names = load_classifier(work / "run" / "best.pt")
    model.eval()
    start = time.perf_counter()
    means, accuracy = evaluate_maps(model, preprocess, class_names, work / "heldout")
    map_seconds = time.perf_counter() - start
    torch.manual_seed(args.seed)
    fresh = build_model(torch.load(work / "run" / "best.pt", weights_only=True)["arch"]).eval()
    trained_sim, initial_sim = similarity_by_distance(model), similarity_by_distance(fresh)
    # the same measures for the same network untrained, and trained on shuffled labels
    baselines = {"trained": (means, accuracy),
                 "untrained (random weights)": evaluate_maps(fresh, preprocess, class_names,
                                                             work / "heldout")}
    shuffled = load_classifier(work / "run_shuffled" / "last.pt")[0].eval()
    baselines["trained on shuffled labels"] = evaluate_maps(shuffled, preprocess, class_names,
                                                            work / "heldout")

    depth = len(model.blocks)
    print(f"\n## Problem 1 attention maps on synthetic shapes\n\nmachine: {machine()}, "
          f"timm {timm.__version__}  ")
    print(f"tiny ViT ({depth} blocks, grid {tuple(model.patch_embed.grid_size)}, "
          f"{image_side} px): {args.train} training images, {args.epochs} epochs, min crop "
          f"{args.min_crop}, trained in {train_seconds:.0f} s; {args.heldout} held-out images, "
          f"classification accuracy {accuracy:.3f}; maps for all of them in {map_seconds:.1f} s\n")
    print("Pointing rules: *overlap* = the map's highest cell (cell (r, c) covers pixels "
          "[r*ph, (r+1)*ph) x [c*pw, (c+1)*pw)) overlaps the object's box; *centre* = that "
          "cell's centre lies inside the box. Chance = the same rule for a uniformly random "
          "cell. Mass ratio = share of the map's mass inside the box / box's share of the "
          "image (1 = no preference).\n")
    result = Path(__file__).parent / "results" / "p1_attention.json"
    write_result(result,
                 "tiny ViT on synthetic shapes: pointing and mass ratio of the [CLS] maps, "
                 "trained against untrained and shuffled-label baselines, and the position "
                 "embeddings' similarity by grid distance",
                 images={"train": args.train, "heldout": args.heldout, "side": image_side},
                 epochs=args.epochs, seed=args.seed, train_seconds=round(train_seconds, 1),
                 models={name: {"accuracy": acc, "maps": kind_means}
                         for name, (kind_means, acc) in baselines.items()},
                 position_similarity={metric: {"trained": trained_sim[metric],
                                               "at initialisation": initial_sim[metric]}
                                      for metric in trained_sim})
    data = json.loads(result.read_text())  # the tables are the recorded data's, as RESULTS.md's
    print("\n".join(RENDERERS["p1_attention_layers"](data)))
    last = data["models"]["trained"]["maps"][f"layer {depth}"]["hit"]
    verdict = "met" if last >= P1_TARGET_POINTING else "NOT met"
    print(f"\nTarget: last-layer pointing (overlap rule) >= {P1_TARGET_POINTING}: {verdict} "
          f"({last:.3f}).\n")
    print("What training adds: the last layer's map (mean of heads) of three models of the same "
          "network on the same held-out images\n")
    print("\n".join(RENDERERS["p1_attention_baselines"](data)))
    print("\nPosition embeddings: mean cosine similarity of patch pairs at each grid distance\n")
    print("\n".join(RENDERERS["p1_position_similarity"](data)))


if __name__ == "__main__":
    run_cli(main)
