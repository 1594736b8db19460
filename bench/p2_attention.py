"""Do the captioner's word maps point at the objects they name? A check on synthetic scenes.

    python bench/p2_attention.py 2>/dev/null      # tqdm bars go to stderr

Trains the small configuration from scratch on scenes of one to three coloured shapes captioned
left to right ("a red circle to the left of a blue square"), on the CPU. Then, on held-out
scenes, it reports exact-caption accuracy and BLEU-4 of the greedy captions, and for every
decoder layer the pointing of the cross-attention (mean of heads): for each colour and shape
word of the reference caption, does the highest cell of the attention row that predicts that
word (teacher forcing: the same row greedy decoding uses whenever its caption is right) have its
centre inside the named object's box? Beside this strict rule it reports two looser ones: the
highest cell overlaps the box (the rule bench/p1_attention.py's target is judged by), and the
pointing game as Zhang et al. (2016) defined it, a maximum within 15 pixels of the box. Chance is
the same rule for a uniformly random cell of the image's map.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.measure import cell_geometry, machine
from hw3core.images import open_rgb
from hw3core.scenes import COLORS, SHAPES
from p2.data import make_scene_set, pad_tokens
from p2.data import preprocess
from p2.decode import caption_images, encode_images
from p2.engine import SCENE_RECIPE, fit
from p2.metrics import bleu4, words
from p2.model import load_captioner
from p2.tokenizer import CaptionTokenizer
from p2.train import parse_args as parse_train_args

TARGET_EXACT = 0.9
TARGET_POINTING = 0.8
TOLERANCE = 15  # pixels of the original image: the pointing game's (Zhang et al., 2016)


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


# the three ways a word map's highest cell can hit the named object (see pointing())
RULES = {"centre": "centre", "overlap": "overlap", "tolerance": f"{TOLERANCE}-px"}


@torch.no_grad()
def pointing(model, folder, tokenizer, batch_size=16):
    """Pointing over every colour/shape word of the held-out scenes, by the three RULES: the
    highest cell's centre inside the box, the highest cell overlapping it, and within TOLERANCE
    pixels of it.

    Returns {layer: {rule: rate}}, {rule: chance} and {layer: {'color': rate, 'shape': rate}}
    by the centre rule; chance is a uniformly random cell of the same map.
    """
    scenes = json.loads((folder / "scenes.json").read_text())
    captions = {a["image_id"]: a["caption"] for a in
                json.loads((folder / "captions.json").read_text())["annotations"]}
    names = {i["file_name"]: i["id"] for i in
             json.loads((folder / "captions.json").read_text())["images"]}
    files = sorted(scenes)
    layers = model.config["dec_layers"]
    hits = {layer: {rule: [] for rule in RULES} for layer in range(layers)}
    kinds, chance = [], []
    for start in range(0, len(files), batch_size):
        batch = files[start:start + batch_size]
        originals = [open_rgb(folder / "images" / name) for name in batch]
        images = [preprocess(image, model.config["input_size"]) for image in originals]
        encoded = encode_images(model, images)
        ids = [tokenizer.encode(captions[names[name]]) for name in batch]
        tokens, padding = pad_tokens(ids)
        _, weights = model.decode(model.start_decoding(encoded), tokens[:, :-1], padding[:, :-1],
                                  attention_layers=range(layers))
        maps = weights.mean(2)  # the mean of the heads: (B, layers, L-1, h*w)
        for b, name in enumerate(batch):
            rows, cols = encoded.grid_sizes()[b]
            # a cell covers stride x stride pixels of the model's input, scaled to the original
            width, height = originals[b].size
            cell = (model.stride * height / images[b].shape[1],
                    model.stride * width / images[b].shape[2])
            for position, obj, kind in named_objects(ids[b], tokenizer):
                area, inside, distance = cell_geometry((rows, cols), cell,
                                                       scenes[name][obj]["box"])
                passes = {"centre": inside, "overlap": area > 0, "tolerance": distance <= TOLERANCE}
                kinds.append(kind)
                chance.append([passes[rule].mean() for rule in RULES])
                for layer in range(layers):
                    # the row of position - 1 is the query whose logits predicted this word
                    heat = maps[b, layer, position - 1].unflatten(
                        0, encoded.padding.shape[1:])[:rows, :cols].numpy()
                    for rule in RULES:
                        hits[layer][rule].append(passes[rule].flat[heat.argmax()])
    kinds = np.array(kinds)
    by_kind = {layer: {kind: float(np.mean(np.array(rules["centre"])[kinds == kind]))
                       if (kinds == kind).any() else float("nan")
                       for kind in ("color", "shape")} for layer, rules in hits.items()}
    rates = {layer: {rule: float(np.mean(rules[rule])) for rule in RULES}
             for layer, rules in hits.items()}
    return rates, dict(zip(RULES, np.mean(chance, axis=0).tolist())), by_kind


def caption_quality(model, folder, tokenizer, batch_size=16):
    """(exact-caption accuracy, BLEU-4) of greedy captions on a make_scene_set folder."""
    content = json.loads((folder / "captions.json").read_text())
    references = {a["image_id"]: a["caption"] for a in content["annotations"]}
    entries = sorted(content["images"], key=lambda e: e["file_name"])
    candidates = []
    for start in range(0, len(entries), batch_size):
        batch = entries[start:start + batch_size]
        images = [preprocess(open_rgb(folder / "images" / e["file_name"]),
                             model.config["input_size"]) for e in batch]
        candidates += [tokenizer.decode(r.tokens) for r in caption_images(model, images, 32)]
    truth = [references[e["id"]] for e in entries]
    exact = np.mean([words(c) == words(t) for c, t in zip(candidates, truth)])
    return float(exact), bleu4(candidates, [[t] for t in truth]), list(zip(candidates, truth))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", help="folder for the data and the run (default: temporary)")
    p.add_argument("--train", type=int, default=3000, help="training scenes")
    p.add_argument("--heldout", type=int, default=200, help="held-out scenes")
    p.add_argument("--epochs", type=int, default=8)
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
        "--val-dir", str(work / "val" / "images"), "--out", str(work / "run"), *SCENE_RECIPE,
        "--lr-backbone", str(args.lr_backbone), "--epochs", str(args.epochs), "--workers", "0",
        "--device", "cpu", "--seed", str(args.seed)])
    start = time.perf_counter()
    fit(train_args)
    train_seconds = time.perf_counter() - start

    model, config = load_captioner(work / "run" / "best.pt")
    tokenizer = CaptionTokenizer()
    start = time.perf_counter()
    exact, bleu, examples = caption_quality(model, work / "heldout", tokenizer)
    hits, chance, by_kind = pointing(model, work / "heldout", tokenizer)
    eval_seconds = time.perf_counter() - start
    best_layer = max(hits, key=lambda layer: hits[layer]["centre"])

    print(f"\n## Problem 2 word maps on synthetic scenes\n\nmachine: {machine()}  ")
    print(f"small captioner ({config['backbone']} to {config['backbone_layer']}, stride "
          f"{model.stride}, {config['input_size']}-pixel input, hidden {config['hidden_dim']}, "
          f"{config['enc_layers']}+{config['dec_layers']} layers, head over "
          f"{len(config['output_tokens'] or ()) or config['vocab_size']} word pieces), backbone lr "
          f"{args.lr_backbone}; "
          f"{args.train} training scenes of 1-3 objects, {args.epochs} epochs, trained in "
          f"{train_seconds:.0f} s; {args.heldout} held-out scenes evaluated in "
          f"{eval_seconds:.0f} s\n")
    print(f"exact caption (greedy): **{exact:.3f}** (target {TARGET_EXACT}); BLEU-4 (greedy): "
          f"{bleu:.3f}\n")
    print(f"| decoder layer | pointing: cell centre in the box | colour words | shape words | "
          f"pointing: cell overlaps the box | pointing game: within {TOLERANCE} px |\n"
          f"| --- | --- | --- | --- | --- | --- |")
    for layer, rates in hits.items():
        name = f"{layer}" + (" (last)" if layer == len(hits) - 1 else "")
        print(f"| {name} | {rates['centre']:.3f} | {by_kind[layer]['color']:.3f} | "
              f"{by_kind[layer]['shape']:.3f} | {rates['overlap']:.3f} | "
              f"{rates['tolerance']:.3f} |")
    print(f"| chance (a uniformly random cell) | {chance['centre']:.3f} | | | "
          f"{chance['overlap']:.3f} | {chance['tolerance']:.3f} |")
    best = hits[best_layer]
    verdicts = ", ".join(f"{best[rule]:.3f} by the {label} rule "
                         f"({'met' if best[rule] >= TARGET_POINTING else 'NOT met'})"
                         for rule, label in RULES.items())
    print(f"\nBest-localising layer: decoder layer {best_layer}. Targets: exact "
          f"{'met' if exact >= TARGET_EXACT else 'NOT met'}; pointing {TARGET_POINTING}: "
          f"{verdicts}.\n")
    print("Examples (greedy | reference):")
    for candidate, truth in examples[:5]:
        print(f"- {candidate} | {truth}")


if __name__ == "__main__":
    main()
