"""The report's sections, one function each: what to read from the inputs, what to compute with
the project's code, and the neutral text that says how to read it. Each adds to a Report."""
import json
from pathlib import Path

import numpy as np

from matplotlib.ticker import MaxNLocator
from reportlab.lib.units import cm

from bench.tables import RENDERERS, RESULTS_MD, marked_tables, plain_cells
from hw3core.checkpoints import load_checkpoint
from hw3core.figures import plt

BUILD = "python report/build.py --out report.pdf"
TRAIN_COMMAND = ("python p1/train.py --train-dir p1_data/train --val-dir p1_data/val "
                 "--out runs/vit")


def _read_run(run):
    """(args, history) of a p1/train.py --out folder, or why it cannot be reported."""
    run = Path(run)
    if not (run / "metrics.jsonl").is_file() or not (run / "args.json").is_file():
        return "no args.json or metrics.jsonl there"
    try:
        args = json.loads((run / "args.json").read_text())
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"args.json or metrics.jsonl unreadable ({err})"
    if not history:  # stopped in its first epoch
        return "no epoch finished yet (metrics.jsonl is empty)"
    return args, history


def _setting(args):
    """A run's recipe in one line, from its args.json."""
    start = Path(args["pretrained"]).name if args.get("pretrained") else "random weights"
    crop = f"crop >= {args['min_crop']:g}" if args.get("crop", True) else "no crop"
    return (f"{args['model']} from {start}, "
            f"{'head only' if args.get('freeze_backbone') else 'whole network'}; "
            f"{args['optimizer']} lr {args['lr']:g}, weight decay {args['weight_decay']:g}, "
            f"{args.get('schedule', 'cosine')} after {args['warmup_epochs']:g} warm-up epoch(s); "
            f"batch {args['batch_size']}; {args['augment']}, {crop}, "
            f"{'flip' if args.get('flip', True) else 'no flip'}, "
            f"label smoothing {args['label_smoothing']:g}")


def accuracy(report, runs, final):
    report.heading("Problem 1-1: validation accuracy of the fine-tuned ViT")
    read = {run: _read_run(run) for run in runs}
    done = {run: value for run, value in read.items() if not isinstance(value, str)}
    for run, value in read.items():
        if isinstance(value, str):
            report.text(f"{run}: {value}; left out.", italic=True)
    if not done:
        report.not_run("p1/train.py run folders (args.json and metrics.jsonl) given with "
                       "--p1-runs", f"{TRAIN_COMMAND}; then {BUILD} --p1-runs runs/vit")
        return
    rows = []
    for run, (args, history) in done.items():
        accuracies = [h["val_acc"] for h in history if "val_acc" in h]
        best = max(range(len(accuracies)), key=accuracies.__getitem__) if accuracies else None
        seconds = sum(h.get("epoch_seconds", h.get("seconds", 0.0)) for h in history)
        rows.append([
            run.name + (" (final)" if run == final else ""), _setting(args),
            (f"{accuracies[best]:.2%} (epoch {history[best]['epoch']})" if accuracies
             else "no validation"),
            f"{accuracies[-1]:.2%}" if accuracies else "-",
            f"{history[-1]['epoch']} of {args['epochs']}",
            f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min",
            history[-1].get("device", "not recorded")])
    report.table(["run", "setting (args.json)", "best val acc", "final val acc", "epochs",
                  "wall-clock", "device"], rows,
                 widths=[2.4 * cm, None, 2.1 * cm, 1.6 * cm, 1.6 * cm, 1.8 * cm, 2.1 * cm])
    if final in done:
        accuracies = [h["val_acc"] for h in done[final][1] if "val_acc" in h]
        if accuracies:
            report.emphasis(f"Final result: {max(accuracies):.2%} validation accuracy "
                            f"(run {final.name}, best.pt).")
    report.text("Validation accuracy is the share of validation images whose highest-scoring "
                "class is the true one. 'Best' is the highest over the epochs, the epoch that "
                "best.pt was saved from; 'final' is the last epoch's. Wall-clock adds up each "
                "epoch's training and validation time as the run recorded it.")
    _curves(report, done)
    _per_class(report, final)
    report.discussion("Compare the settings: the whole network against the head only (a fixed "
                      "feature extractor), the optimizers, learning rates and epochs. Which "
                      "setting gave the final result, and why might it have?")


def _curves(report, done):
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for run, (_, history) in done.items():
        epochs = [h["epoch"] for h in history]
        if any("val_acc" in h for h in history):
            ax_acc.plot(epochs, [h.get("val_acc", np.nan) for h in history], "o-", label=run.name)
        ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label=run.name)
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="training loss")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    report.figure(fig, "Every run's curves, one line per run, from its metrics.jsonl.",
                  max_height=6.5 * cm)


def _per_class(report, final):
    path = Path(final) / "best_confusion.json"
    report.heading("Per-class accuracy of the final run", level=2, new_page=True)
    if not path.is_file():
        report.not_run(f"{path} (written by p1/train.py with --val-dir)", TRAIN_COMMAND)
        return
    record = json.loads(path.read_text())
    counts = np.array(record["counts"])
    names = record["class_names"]
    totals = counts.sum(1)
    rows = [[name, int(total), int(counts[i, i]),
             f"{counts[i, i] / total:.1%}" if total else "no images"]
            for i, (name, total) in enumerate(zip(names, totals))]
    best = Path(final) / "best.pt"
    # only a run killed between its writes of best.pt and best_confusion.json leaves them apart
    saved = load_checkpoint(best, mmap=True).get("epoch") if best.is_file() else record["epoch"]
    source = ("the epoch best.pt was saved from" if saved == record["epoch"] else
              f"not the epoch best.pt was saved from ({saved}): the run stopped between the two "
              "writes, and resuming it from last.pt trains that epoch again")
    report.text(f"From best_confusion.json: the validation images of epoch {record['epoch']}, "
                f"{source}, by true class.")
    report.table(["class", "images", "right", "accuracy"], rows,
                 widths=[3 * cm, 2 * cm, 2 * cm, 2 * cm])
    off = counts.copy()
    np.fill_diagonal(off, 0)
    pairs = sorted(((int(off[i, j]), i, j) for i in range(len(names)) for j in range(len(names))
                    if off[i, j]), reverse=True)[:5]
    if pairs:
        report.text("The most frequent confusions (true class taken for another):")
        report.table(["true class", "predicted as", "images", "share of the true class"],
                     [[names[i], names[j], n, f"{n / totals[i]:.1%}"] for n, i, j in pairs],
                     widths=[3 * cm, 3 * cm, 2 * cm, 4 * cm])
    else:
        report.text("No validation image of that epoch was confused with another class.")


def position_embeddings(report, checkpoint):
    report.heading("Problem 1-2: cosine similarity of the position embeddings")
    if not checkpoint or not Path(checkpoint).is_file():
        report.not_run("a Problem 1 checkpoint (--p1-checkpoint, or a final run with best.pt)",
                       f"{TRAIN_COMMAND}; then {BUILD} --p1-runs runs/vit")
        return
    from p1.attention import position_similarity
    from p1.model import load_classifier
    from p1.figures import plot_position_similarity

    model = load_classifier(checkpoint)[0]
    similarity = position_similarity(model).numpy()
    rows, cols = similarity.shape[:2]
    report.figure(plot_position_similarity(similarity, f"{Path(checkpoint).name}: {rows} x {cols} "
                                           "patches"), max_height=13 * cm)
    report.text(f"Tile (r, c), at row r and column c of the {rows} x {cols} patch grid, shows the "
                "cosine similarity of patch (r, c)'s position embedding with every patch's "
                "([CLS] left out); its brightest cell, 1.0, is the patch itself.")
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    r, c = r.ravel(), c.ravel()
    flat = similarity.reshape(rows * cols, rows * cols)
    distance = np.maximum(abs(r[:, None] - r[None]), abs(c[:, None] - c[None]))
    same_line = (r[:, None] == r[None]) | (c[:, None] == c[None])
    other = distance > 0
    table = [[f"{d}", int((distance == d).sum()), f"{flat[distance == d].mean():.3f}"]
             for d in range(1, min(6, int(distance.max()) + 1))]
    table.append(["same row or column", int((same_line & other).sum()),
                  f"{flat[same_line & other].mean():.3f}"])
    table.append(["neither", int((~same_line).sum()), f"{flat[~same_line].mean():.3f}"])
    report.text("Mean similarity of pairs of different patches, by grid distance (the larger "
                "of the row and column offsets), and for pairs in the same row or column "
                "against the others:")
    report.table(["pairs", "count", "mean cosine similarity"], table,
                 widths=[4 * cm, 2.5 * cm, 4 * cm])
    report.discussion("What does the mosaic show about how the embeddings encode position: "
                      "are neighbours, and patches in the same row or column, more similar?")


def attention(report, checkpoint, images):
    report.heading("Problem 1-3: what the last layer's [CLS] token attends to")
    command = (f"{BUILD} --p1-runs runs/vit --p1-images "
               + " ".join(f"p1_data/val/{name}" for name in ("26_5064.jpg", "29_4718.jpg",
                                                             "31_4838.jpg")))
    if not checkpoint or not Path(checkpoint).is_file():
        report.not_run("a Problem 1 checkpoint", f"{TRAIN_COMMAND}; then {command}")
        return
    if not images:
        report.not_run("the images to show (--p1-images)", command)
        return
    import torch

    from hw3core.images import UnreadableImage, open_rgb
    from p1.attention import attended_tokens, cls_attention
    from p1.data import eval_transform
    from p1.model import grid_size, load_classifier
    from p1.figures import plot_on_original, prediction_heading

    model, preprocess, class_names = load_classifier(checkpoint)
    model.eval()
    transform = eval_transform(preprocess["image_size"], preprocess["mean"], preprocess["std"])
    height, width = preprocess["image_size"]
    rows, cols = grid_size(model)
    heads = model.blocks[-1].attn.num_heads
    tokens = attended_tokens(model)
    report.text(f"Each map is the softmax attention of the [CLS] query over the {rows} x {cols} "
                f"patch keys in the last of the {len(model.blocks)} blocks, the mean of its "
                f"{heads} heads. The model sees the photo resized to {height} x {width} pixels, "
                "so each patch covers the same share of the photo, and the cells are drawn "
                "stretched to the photo's own shape. The colour scale runs from the map's "
                f"lowest weight to its highest; its dashed line marks 1/{tokens}, attention "
                f"spread evenly over the {tokens} tokens. The true class, where shown, is read "
                "from the file's name ({label}_{id}) or its class folder.")
    for path in map(Path, images):
        try:
            photo = open_rgb(path)
        except UnreadableImage as err:
            report.text(f"{err}: left out.", italic=True)
            continue
        with torch.no_grad():
            maps, logits = cls_attention(model, transform(photo)[None], -1, with_logits=True)
        heading = prediction_heading(path, logits.float().softmax(-1)[0], class_names)
        report.figure(plot_on_original(np.asarray(photo), maps[0].mean(0).numpy(),
                                       "last layer's [CLS] attention", heading, tokens),
                      max_height=6.6 * cm)
    report.discussion("What does the model attend to in each image? Where the prediction is "
                      "wrong, does the map show why?")


def captions(report, checkpoint, image_dir, limit):
    report.heading("Problem 2-2: a caption and where each word looked")
    command = (f"bash hw3_download.sh; {BUILD} --p2-checkpoint checkpoints/catr_v3.pth "
               "--p2-images p2_data/images")
    if not checkpoint or not Path(checkpoint).is_file():
        report.not_run("a CATR checkpoint (--p2-checkpoint)", command)
        return
    if not image_dir or not Path(image_dir).is_dir():
        report.not_run("a folder of images to caption (--p2-images)", command)
        return
    from hw3core.images import list_images
    from p2.decode import caption_folder
    from p2.model import load_captioner
    from p2.tokenizer import CaptionTokenizer
    from p2.figures import caption_figure, maps_source

    model, config = load_captioner(checkpoint)
    tokenizer = CaptionTokenizer()
    layers = config["dec_layers"]
    report.text("Decoding is greedy, as CATR's: from [CLS] the decoder predicts one word piece "
                "at a time, each from the image's features and the pieces before it, until it "
                "predicts [SEP] or reaches the length limit. A word's map is the cross-attention "
                f"of the query that produced it, in the last of the {layers} decoder layers, the "
                f"mean over its {config['nheads']} heads: one weight per cell of the backbone's "
                f"feature map ({model.stride} x {model.stride} pixels of the resized image), drawn "
                "smoothly between the cells' centres. "
                "The first panel is the image as the model saw it. Each panel's colours run from "
                "its own lowest weight to its highest. The table gives, for each word, the share "
                "of its attention on its single highest cell and on its three highest cells.")
    source = maps_source(layers - 1, layers, config["nheads"], per_head=False)
    paths = list_images(image_dir)[:limit]
    for path, image, result in caption_folder(model, paths, batch_size=1, attention_layer=-1):
        caption = tokenizer.decode(result.tokens)
        pieces = tokenizer.pieces(result.tokens[1:])
        report.heading(f"{path.name}: \"{caption}\"", level=2)
        report.figure(caption_figure(image, caption, pieces, result.attention, False,
                                     model.stride, source), max_height=14 * cm)
        rows = []
        for piece, heat in zip(pieces, result.attention):
            weights = np.sort(heat.ravel())[::-1] / heat.sum()
            rows.append([piece, f"{weights[0]:.1%}", f"{weights[:3].sum():.1%}", heat.size])
        report.table(["word piece", "highest cell", "three highest cells", "cells"], rows,
                     widths=[3.5 * cm, 3 * cm, 3.5 * cm, 2 * cm])
    report.discussion("What do the maps show: does each word look at the thing it names? How "
                      "do function words and [SEP] behave?")


def benchmarks(report, folder):
    report.heading("Measurements (bench/results)")
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        report.not_run(f"benchmark results in {folder}", "python -m bench.sweep_learned")
        return
    report.text("Each benchmark script writes its results as JSON with the machine and date; "
                "the tables below are rendered from those files by bench/tables.py, as "
                "bench/RESULTS.md's are, where the prose around them says what each measures. "
                "Files marked transcribed hold figures copied once from runs that cannot be "
                "repeated here.")
    kinds = {}
    for kind, source in marked_tables(RESULTS_MD.read_text()):
        kinds.setdefault(Path(source).name, []).append(kind)
    untabled = []
    for path in files:
        if path.name not in kinds:
            untabled.append(path.name)
            continue
        data = json.loads(path.read_text())
        report.heading(f"{path.name}: {data.get('what', '')}", level=2)
        report.text(f"{data.get('date', '')[:10]}, {data.get('machine', '')}"
                    + (" (transcribed)" if data.get("transcribed") else ""), small=True,
                    keep_with_next=True)
        for kind in kinds[path.name]:
            header, _, *rows = map(plain_cells, RENDERERS[kind](data))
            report.table(header, rows, widths=[None] * len(header))
    if untabled:
        report.text(f"Also in {folder.name}, with no table: {', '.join(untabled)}.", small=True)
