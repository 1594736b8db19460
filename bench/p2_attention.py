"""Do the captioner's word maps point at the objects they name? A check on synthetic scenes.

    python bench/p2_attention.py 2>/dev/null      # tqdm bars go to stderr

Trains the small configuration from scratch on scenes of one to three coloured shapes captioned
left to right ("a red circle to the left of a blue square"), on the CPU. Then, on held-out
scenes, it reports exact-caption accuracy and BLEU-4 of the greedy captions, and for every
decoder layer the pointing game of the cross-attention (mean of heads): for each colour and
shape word of the reference caption, does the highest cell of the attention row that predicts
that word (teacher forcing: the same row greedy decoding uses whenever its caption is right) have
its centre inside the named object's box? Chance is the same rule for a uniformly random cell of
the image's map.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.measure import machine  # noqa: E402
from hw3core.images import open_rgb  # noqa: E402
from hw3core.scenes import COLORS, SHAPES  # noqa: E402
from p2.data import make_scene_set, pad_tokens, scale_box  # noqa: E402
from p2.decode import caption_images, encode_images, preprocess  # noqa: E402
from p2.engine import fit  # noqa: E402
from p2.metrics import bleu4, words  # noqa: E402
from p2.model import load_captioner  # noqa: E402
from p2.tokenizer import CaptionTokenizer  # noqa: E402
from p2.train import parse_args as parse_train_args  # noqa: E402

TARGET_EXACT = 0.9
TARGET_POINTING = 0.8


def centre_in_box(grid, stride, box):
    """(rows, cols) bool: does cell (r, c), covering pixels [r*stride, (r+1)*stride) of the
    model's input, have its centre inside ``box`` (x0, y0, x1, y1, same pixels)?"""
    rows, cols = grid
    x0, y0, x1, y1 = box
    cy = (np.arange(rows) + 0.5) * stride
    cx = (np.arange(cols) + 0.5) * stride
    return np.outer((cy >= y0) & (cy < y1), (cx >= x0) & (cx < x1))


def named_objects(token_ids, tokenizer):
    """[(position, object index, 'color' or 'shape')] for the colour and shape words of a
    caption; the k-th colour word and the k-th shape word name the k-th object from the left."""
    kinds = {tokenizer.encode(w)[1]: "color" for w in COLORS}
    kinds.update({tokenizer.encode(w)[1]: "shape" for w in SHAPES})
    seen = {"color": 0, "shape": 0}
    named = []
    for position, token in enumerate(token_ids):
        kind = kinds.get(token)
        if kind:
            named.append((position, seen[kind], kind))
            seen[kind] += 1
    return named


@torch.no_grad()
def pointing(model, folder, tokenizer, batch_size=16):
    """{layer: {'hit', 'chance'}} means over every colour/shape word of the held-out scenes."""
    scenes = json.loads((folder / "scenes.json").read_text())
    captions = {a["image_id"]: a["caption"] for a in
                json.loads((folder / "captions.json").read_text())["annotations"]}
    names = {i["file_name"]: i["id"] for i in
             json.loads((folder / "captions.json").read_text())["images"]}
    files = sorted(scenes)
    layers = model.config["dec_layers"]
    hits = {layer: [] for layer in range(layers)}
    chance = []
    for start in range(0, len(files), batch_size):
        batch = files[start:start + batch_size]
        originals = [open_rgb(folder / "images" / name) for name in batch]
        images = [preprocess(image, model.config["input_size"]) for image in originals]
        encoded = encode_images(model, images)
        ids = [tokenizer.encode(captions[names[name]]) for name in batch]
        tokens, padding = pad_tokens(ids)
        per_layer = []
        for layer in range(layers):
            state = model.start_decoding(encoded)
            _, weights = model.decode(state, tokens[:, :-1], padding[:, :-1],
                                      attention_layer=layer)
            per_layer.append(weights.mean(1))  # (B, L-1, h*w)
        for b, name in enumerate(batch):
            rows, cols = encoded.grid_sizes()[b]
            input_size = (images[b].shape[2], images[b].shape[1])
            for position, obj, _ in named_objects(ids[b], tokenizer):
                box = scale_box(scenes[name][obj]["box"], originals[b].size, input_size)
                inside = centre_in_box((rows, cols), model.stride, box)
                chance.append(inside.mean())
                for layer in range(layers):
                    # the row of position - 1 is the query whose logits predicted this word
                    heat = per_layer[layer][b, position - 1].unflatten(
                        0, encoded.padding.shape[1:])[:rows, :cols].numpy()
                    hits[layer].append(inside.flat[heat.argmax()])
    return {layer: float(np.mean(h)) for layer, h in hits.items()}, float(np.mean(chance))


def caption_quality(model, folder, tokenizer, batch_size=16):
    """(exact-caption accuracy, BLEU-4) of greedy captions on a make_scene_set folder."""
    content = json.loads((folder / "captions.json").read_text())
    references = {a["image_id"]: a["caption"] for a in content["annotations"]}
    entries = sorted(content["images"], key=lambda e: e["file_name"])
    candidates = []
    for start in range(0, len(entries), batch_size):
        batch = entries[start:start + batch_size]
        images = [preprocess(open_rgb(folder / "images" / e["file_name"]), model.config["input_size"])
                  for e in batch]
        candidates += [tokenizer.decode(r.tokens) for r in caption_images(model, images, 32)]
    truth = [references[e["id"]] for e in entries]
    exact = np.mean([words(c) == words(t) for c, t in zip(candidates, truth)])
    return float(exact), bleu4(candidates, [[t] for t in truth]), list(zip(candidates, truth))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", help="folder for the data and the run (default: temporary)")
    p.add_argument("--train", type=int, default=1000, help="training scenes")
    p.add_argument("--heldout", type=int, default=200, help="held-out scenes")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr-backbone", type=float, default=1e-3,
                   help="0 freezes the randomly initialised backbone (%(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        run(args, Path(args.work or scratch))


def run(args, work):
    make_scene_set(work / "train", args.train, seed=args.seed)
    make_scene_set(work / "val", 60, seed=args.seed + 1, start_id=args.train)
    make_scene_set(work / "heldout", args.heldout, seed=args.seed + 2, start_id=args.train + 60)
    train_args = parse_train_args([
        "--train-json", str(work / "train" / "captions.json"),
        "--train-dir", str(work / "train" / "images"),
        "--val-json", str(work / "val" / "captions.json"),
        "--val-dir", str(work / "val" / "images"), "--out", str(work / "run"),
        "--config", "small", "--epochs", str(args.epochs), "--batch-size", "16",
        "--lr", "1e-3", "--lr-backbone", str(args.lr_backbone), "--schedule", "cosine",
        "--warmup", "50",
        "--clip-grad", "1.0", "--dropout", "0", "--no-rotate", "--no-color-jitter",
        "--max-len", "32", "--workers", "1", "--device", "cpu", "--seed", str(args.seed)])
    start = time.perf_counter()
    fit(train_args)
    train_seconds = time.perf_counter() - start

    model, config = load_captioner(work / "run" / "best.pt")
    tokenizer = CaptionTokenizer()
    start = time.perf_counter()
    exact, bleu, examples = caption_quality(model, work / "heldout", tokenizer)
    hits, chance = pointing(model, work / "heldout", tokenizer)
    eval_seconds = time.perf_counter() - start
    best_layer = max(hits, key=hits.get)

    print(f"\n## Problem 2 word maps on synthetic scenes\n\nmachine: {machine()}  ")
    print(f"small captioner ({config['backbone']}, stride {model.stride}, hidden "
          f"{config['hidden_dim']}, {config['enc_layers']}+{config['dec_layers']} layers), "
          f"backbone lr {args.lr_backbone}; {args.train} training scenes of 1-3 objects, "
          f"{args.epochs} epochs, trained in {train_seconds:.0f} s; {args.heldout} held-out "
          f"scenes evaluated in {eval_seconds:.0f} s\n")
    print("| measure | value | target |\n| --- | --- | --- |")
    print(f"| exact caption (greedy) | {exact:.3f} | >= {TARGET_EXACT} |")
    print(f"| BLEU-4 (greedy) | {bleu:.3f} | |")
    for layer, hit in hits.items():
        name = f"decoder layer {layer}" + (" (last)" if layer == len(hits) - 1 else "")
        print(f"| pointing, {name}, colour and shape words | {hit:.3f} | "
              f"{'>= ' + str(TARGET_POINTING) if layer == best_layer else ''} |")
    print(f"| pointing, chance (uniformly random cell) | {chance:.3f} | |")
    print(f"\nBest-localising layer: decoder layer {best_layer} ({hits[best_layer]:.3f}). "
          f"Targets: exact {'met' if exact >= TARGET_EXACT else 'NOT met'}, pointing "
          f"{'met' if hits[best_layer] >= TARGET_POINTING else 'NOT met'}.\n")
    print("Examples (greedy | reference):")
    for candidate, truth in examples[:5]:
        print(f"- {candidate} | {truth}")


if __name__ == "__main__":
    main()
