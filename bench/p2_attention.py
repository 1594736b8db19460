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
the same rule for a uniformly random cell of the image's map. The mass ratio is the row's
attention mass inside the box divided by the box's share of the image (1 = no better than a
uniform map), the mean over the words.

The same measures are given for two baselines of the same network on the same scenes: untrained
(random weights) and trained by the same recipe on the training captions shuffled among the
images. Everything goes to bench/results/p2_attention.json.
"""
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.measure import cell_geometry, machine, write_result
from bench.tables import RENDERERS
from hw3core.cli import parser, run_cli
from hw3core.images import open_rgb
from hw3core.scenes import COLORS, SHAPES
from hw3core.training import replace_run
from p2.configs import SCENE_RECIPE
from p2.data import SCENE_SIZE, make_scene_set, pad_tokens
from p2.data import preprocess
from p2.decode import caption_images, encode_images
from p2.engine import fit
from p2.metrics import bleu4, words
from p2.model import build_model, load_captioner
from p2.tokenizer import CaptionTokenizer
from p2.train import parse_args as parse_train_args

TARGET_EXACT = 0.9
TARGET_POINTING = 0.8
TOLERANCE = 15  # pixels of the original image: the pointing game's (Zhang et al., 2016)
VAL_SCENES = 60


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


# the three ways a word map's highest cell can hit the named object (see word_maps()), by their
# names in the JSON and the words the verdict uses
RULES = {"centre": "centre", "overlap": "overlap", f"within_{TOLERANCE}px": f"{TOLERANCE}-px"}


@torch.no_grad()
def word_maps(model, folder, tokenizer, batch_size=16):
    """The measures of every colour/shape word's map in the held-out scenes, per decoder layer.

    Returns ([{'layer', each of RULES, 'colour_words', 'shape_words', 'mass_ratio'}] a layer,
    {rule: chance}). A rule's rate is the share of words whose map's highest cell passes it
    (the highest cell's centre inside the box, the cell overlapping it, within TOLERANCE pixels
    of it); the colour and shape split is by the centre rule; chance is a uniformly random cell
    of the same map.
    """
    scenes = json.loads((folder / "scenes.json").read_text())
    content = json.loads((folder / "captions.json").read_text())
    captions = {a["image_id"]: a["caption"] for a in content["annotations"]}
    names = {i["file_name"]: i["id"] for i in content["images"]}
    files = sorted(scenes)
    layers = model.config["dec_layers"]
    kinds, chance, hits, mass = [], [], [], []
    for start in range(0, len(files), batch_size):
        batch = files[start:start + batch_size]
        originals = [open_rgb(folder / "images" / name) for name in batch]
        images = [preprocess(image, model.config["input_size"]) for image in originals]
        encoded = encode_images(model, images)
        ids = [tokenizer.encode(captions[names[name]]) for name in batch]
        tokens, padding = pad_tokens(ids)
        _, weights = model.decode(model.start_decoding(encoded), tokens[:, :-1], padding[:, :-1],
                                  attention_layers=range(layers))
        maps = weights.mean(2).unflatten(-1, encoded.padding.shape[1:])  # heads' mean, on the grid
        for b, name in enumerate(batch):
            rows, cols = encoded.grid_sizes()[b]
            # a cell covers stride x stride pixels of the model's input, scaled to the original
            width, height = originals[b].size
            cell = (model.stride * height / images[b].shape[1],
                    model.stride * width / images[b].shape[2])
            for position, obj, kind in named_objects(ids[b], tokenizer):
                area, inside, distance = cell_geometry((rows, cols), cell,
                                                       scenes[name][obj]["box"])
                passes = dict(zip(RULES, (inside, area > 0, distance <= TOLERANCE)))
                kinds.append(kind)
                chance.append([passes[rule].mean() for rule in RULES])
                # the row of position - 1 is the query whose logits predicted this word
                heat = maps[b, :, position - 1, :rows, :cols].flatten(1).numpy()  # (layers, cells)
                hits.append([[passes[rule].flat[best] for rule in RULES]
                             for best in heat.argmax(1)])
                # each cell's weight counts for the share of the cell inside the box
                cell_area = cell[0] * cell[1]
                inside_mass = heat @ area.ravel() / cell_area / heat.sum(1)
                box_share = area.sum() / (cell_area * area.size)
                mass.append(inside_mass / box_share)
    kinds, hits, mass = np.array(kinds), np.array(hits, dtype=float), np.array(mass)
    measures = []
    for layer in range(layers):
        m = {"layer": layer,
             **{rule: float(hits[:, layer, r].mean()) for r, rule in enumerate(RULES)}}
        for kind, key in (("color", "colour_words"), ("shape", "shape_words")):
            centre = hits[kinds == kind, layer, 0]
            m[key] = float(centre.mean()) if centre.size else float("nan")
        m["mass_ratio"] = float(mass[:, layer].mean())
        measures.append(m)
    return measures, dict(zip(RULES, np.mean(chance, axis=0).tolist()))


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


def shuffled_captions(source, out, seed):
    """``source``'s COCO caption file with the captions permuted among its images: the same
    captions and images, paired at random, so a model trained on it cannot learn which words an
    image shows."""
    content = json.loads(source.read_text())
    annotations = content["annotations"]
    order = np.random.default_rng(seed).permutation(len(annotations))
    content["annotations"] = [{**a, "caption": annotations[i]["caption"]}
                              for a, i in zip(annotations, order)]
    out.write_text(json.dumps(content) + "\n")


def train(args, work, captions, out):
    """Seconds to fit the scene recipe on work/train's images under ``captions``."""
    replace_run(out)  # a --work folder's earlier run
    start = time.perf_counter()
    fit(parse_train_args([
        "--train-json", str(captions), "--train-dir", str(work / "train" / "images"),
        "--val-json", str(work / "val" / "captions.json"),
        "--val-dir", str(work / "val" / "images"), "--out", str(out), *SCENE_RECIPE,
        "--lr-backbone", str(args.lr_backbone), "--epochs", str(args.epochs), "--workers", "0",
        "--device", "cpu", "--seed", str(args.seed)]))
    return time.perf_counter() - start


def val_exact_by_epoch(run):
    return [json.loads(line)["val_exact"] for line in (run / "metrics.jsonl").open()]


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--work", help="folder for the data and the run (default: temporary)")
    p.add_argument("--train", type=int, default=3000, help="training scenes")
    p.add_argument("--heldout", type=int, default=200, help="held-out scenes")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr-backbone", type=float, default=1e-3,
                   help="0 freezes the randomly initialised backbone (%(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path,
                   default=Path(__file__).resolve().parent / "results" / "p2_attention.json",
                   help="JSON file for the results (%(default)s)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        run(args, Path(args.work or scratch))


def run(args, work):
    make_scene_set(work / "train", args.train, seed=args.seed)
    make_scene_set(work / "val", VAL_SCENES, seed=args.seed + 1, start_id=args.train)
    make_scene_set(work / "heldout", args.heldout, seed=args.seed + 2,
                   start_id=args.train + VAL_SCENES)
    shuffled_captions(work / "train" / "captions.json", work / "train_shuffled.json",
                      args.seed + 3)
    train_seconds = {
        "trained": train(args, work, work / "train" / "captions.json", work / "run"),
        "trained on shuffled captions": train(args, work, work / "train_shuffled.json",
                                              work / "run_shuffled")}

    trained, config = load_captioner(work / "run" / "best.pt")
    torch.manual_seed(args.seed)
    models = {"trained": trained, "untrained (random weights)": build_model(config),
              # best.pt is picked by CIDEr against the true validation captions, which would
              # select on the pairing the shuffled run is meant not to see
              "trained on shuffled captions": load_captioner(work / "run_shuffled" / "last.pt")[0]}
    tokenizer = CaptionTokenizer()
    start = time.perf_counter()
    results = {}
    for name, model in models.items():
        exact, bleu, examples = caption_quality(model, work / "heldout", tokenizer)
        layers, chance = word_maps(model, work / "heldout", tokenizer)
        results[name] = {"exact": exact, "bleu4": bleu, "layers": layers,
                         "examples": [f"{c} | {t}" for c, t in examples[:5]]}
    eval_seconds = time.perf_counter() - start

    fields = dict(
        config=config, lr_backbone=args.lr_backbone, seed=args.seed, epochs=args.epochs,
        scenes={"train": args.train, "val": VAL_SCENES, "heldout": args.heldout,
                "width": SCENE_SIZE[0], "height": SCENE_SIZE[1], "objects": "1-3"},
        train_seconds=train_seconds, eval_seconds=eval_seconds,
        val_exact_by_epoch={"trained": val_exact_by_epoch(work / "run"),
                            "trained on shuffled captions":
                            val_exact_by_epoch(work / "run_shuffled")},
        chance=chance, models=results)
    print(f"\n## Problem 2 word maps on synthetic scenes\n\nmachine: {machine()}  ")
    print(f"small captioner ({config['backbone']} to {config['backbone_layer']}, stride "
          f"{trained.stride}, {config['input_size']}-pixel input, hidden {config['hidden_dim']}, "
          f"{config['enc_layers']}+{config['dec_layers']} layers, head over "
          f"{len(config['output_tokens'] or ()) or config['vocab_size']} word pieces), backbone lr "
          f"{args.lr_backbone}; {args.train} training scenes of 1-3 objects, {args.epochs} "
          f"epochs, trained in {train_seconds['trained']:.0f} s (on shuffled captions in "
          f"{train_seconds['trained on shuffled captions']:.0f} s); {args.heldout} held-out "
          f"scenes, three models evaluated in {eval_seconds:.0f} s\n")
    ours = results["trained"]
    print(f"exact caption (greedy): **{ours['exact']:.3f}** (target {TARGET_EXACT}); BLEU-4 "
          f"(greedy): {ours['bleu4']:.3f}\n")
    print("\n".join(RENDERERS["p2_attention_layers_mass"](fields)) + "\n")
    best = max(ours["layers"], key=lambda m: m["centre"])
    verdicts = ", ".join(f"{best[rule]:.3f} by the {label} rule "
                         f"({'met' if best[rule] >= TARGET_POINTING else 'NOT met'})"
                         for rule, label in RULES.items())
    print(f"Best-localising layer: decoder layer {best['layer']}. Targets: exact "
          f"{'met' if ours['exact'] >= TARGET_EXACT else 'NOT met'}; pointing {TARGET_POINTING}: "
          f"{verdicts}.\n")
    print("The same measures for the untrained network and the one trained on shuffled "
          "captions:\n")
    print("\n".join(RENDERERS["p2_attention_baselines"](fields)) + "\n")
    for name, result in results.items():
        print(f"Examples, {name} (greedy | reference):")
        print("".join(f"- {example}\n" for example in result["examples"]))
    write_result(args.out, "small captioner on synthetic scenes: exact captions, BLEU-4, and per "
                 "decoder layer the pointing (three rules, against a random cell) and mass ratio "
                 "of the word maps, trained against untrained and shuffled-caption baselines",
                 **fields)


if __name__ == "__main__":
    run_cli(main)
