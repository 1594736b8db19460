"""Training: optimizer and schedule factories, one epoch, evaluation, and the whole run (fit)."""
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from hw3core.checkpoints import check_format, format_tag, load_checkpoint, unwrap_state_dict
from hw3core.errors import UserError
from hw3core.images import ImageFileDataset, collate_skip, decoded_bytes
from hw3core.runtime import (autocast, distributed, fit_shared_memory, is_main_process,
                             print0, seed_everything, share_cores, sum_over_ranks)
from hw3core.training import (EpochLoader, open_run, signals_during_backward, train_epochs,
                              train_steps, validation_loader, warmup_cosine, wrap_for_ranks)
from p1.data import (DecodedImages, LabelledImages, ScaleNormalize, discover, eval_resize,
                     train_transform)
from p1.model import (DEFAULT_MEAN, DEFAULT_STD, build_model,
                      forward_flops_per_image, grid_size, load_weights, make_arch)


def build_optimizer(model, name, lr, weight_decay):
    """SGD (momentum 0.9) or AdamW over the trainable parameters (of a model already on its
    device: the step is fused on a GPU).

    Biases, norms, the position table and the [CLS] token get no weight decay: shrinking them
    toward zero has no regularising meaning.
    """
    decay, no_decay = [], []
    for param_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = param.ndim < 2 or param_name in ("pos_embed", "cls_token")
        (no_decay if plain else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # one kernel for all parameters on a GPU, instead of several per parameter group
    fused = next(model.parameters()).is_cuda
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, fused=fused)
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def build_scheduler(optimizer, steps_per_epoch, epochs, warmup_epochs, schedule="cosine"):
    """Linear warm-up for ``warmup_epochs``, then cosine decay to zero (``schedule`` "cosine") or
    the peak rate held ("constant"), stepped once per optimizer step."""
    total = steps_per_epoch * epochs
    warmup = min(total, round(steps_per_epoch * warmup_epochs))
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
    return warmup_cosine(optimizer, warmup, total)


def train_one_epoch(model, loader, optimizer, scheduler, scaler, device, sums, stop, step_seed,
                    *, precision="auto", grad_accum=1, label_smoothing=0.0, mix=None,
                    clip_grad=None, placeholder=None, normalize=None, desc="train"):
    """hw3core.training.train_steps with the classifier's loss (its arguments up to
    ``step_seed``). ``normalize`` (ScaleNormalize) makes the model's input of an image batch on
    the device; without it the batch is the input. ``mix``: MixUp or CutMix of a batch and its
    labels. ``placeholder``: an input batch of one for the steps where this process, under
    torchrun, has no readable image."""
    def loss_of(batch):
        inputs, targets = (t.to(device, non_blocking=True) for t in batch)
        if normalize is not None:
            inputs = normalize(inputs)
        if mix is not None:
            inputs, targets = mix(inputs, targets)
        with autocast(device, precision):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        return loss, len(inputs), len(inputs)

    train_steps(model, loader, optimizer, scheduler, scaler, device, sums, stop, step_seed,
                loss_of=loss_of, placeholder_forward=lambda: model(placeholder),
                grad_accum=grad_accum, clip_grad=clip_grad, desc=desc)


@torch.inference_mode()
def evaluate(model, loader, device, classes, precision="auto", normalize=None, desc="val"):
    """Mean loss, accuracy and the confusion counts (true class x predicted class, ``classes``
    of each) over ``loader``, summed exactly over ranks; ``normalize`` as train_one_epoch's."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(classes * classes, dtype=torch.int64, device=device)
    for batch in tqdm(loader, desc=desc, disable=not is_main_process(), dynamic_ncols=True,
                      leave=False):
        if batch is None:
            continue
        inputs, targets = (t.to(device, non_blocking=True) for t in batch)
        with autocast(device, precision):
            logits = model(inputs if normalize is None else normalize(inputs))
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").double()
        # not bincount, which on a GPU waits for it to learn the output's size
        cells = targets * classes + logits.argmax(1)
        confusion.index_add_(0, cells, torch.ones_like(cells))
    # one all-reduce for both; float64 holds the counts exactly
    loss_sum, *counts = sum_over_ranks([loss_sum.item(), *confusion.tolist()], device)
    confusion = [[int(n) for n in counts[row * classes:(row + 1) * classes]]
                 for row in range(classes)]
    count = sum(map(sum, confusion))
    right = sum(confusion[i][i] for i in range(classes))
    return {"val_loss": loss_sum / max(count, 1), "val_acc": right / max(count, 1),
            "val_images": count, "confusion": confusion}


def fit(args):
    """The whole run that train.py describes: data, model, resume, epochs, checkpoints, curves."""
    with distributed() as dist_info:  # the run in a call of its own: see distributed()
        _fit(args, dist_info)


def _fit(args, dist_info):
    device, resume, workers = open_run(args, "hw3-p1-vit", dist_info)
    train_samples, class_names = discover(args.train_dir)
    val_samples = discover(args.val_dir, class_names)[0] if args.val_dir else []
    model, arch, preprocess = _model_for_run(args, class_names, resume)
    model.to(device)
    train_loader, val_loader = build_loaders(args, preprocess, train_samples, val_samples,
                                             workers, device, dist_info)
    optimizer = build_optimizer(model, args.optimizer, args.lr, args.weight_decay)
    scheduler = build_scheduler(optimizer, math.ceil(len(train_loader) / args.grad_accum),
                                args.epochs, args.warmup_epochs, args.schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    if device.type == "cpu" and not args.compile:
        signals_during_backward(model.blocks)
    net = wrap_for_ranks(torch.compile(model) if args.compile else model, device, dist_info)
    placeholder = torch.zeros(1, 3, *arch["image_size"], device=device)
    normalize = ScaleNormalize(preprocess["mean"], preprocess["std"])
    mix = _mixing(args, len(class_names))
    print0(f"{arch['name']}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
           f"parameters, grid {grid_size(model)}, {len(class_names)} classes, "
           f"{len(train_samples)} train / {len(val_samples)} val images, "
           f"{dist_info.world_size} process(es) on {device.type}")
    last_confusion = None

    def train_epoch(e):
        train_one_epoch(net, e.loader, optimizer, scheduler, scaler, device, e.sums, e.stop,
                        e.step_seed, precision=args.precision, grad_accum=args.grad_accum,
                        label_smoothing=args.label_smoothing, mix=mix,
                        clip_grad=args.clip_grad, placeholder=placeholder,
                        normalize=normalize, desc=f"epoch {e.index + 1}/{args.epochs}")

    def validate():
        nonlocal last_confusion
        figures = evaluate(net, val_loader, device, len(class_names), args.precision,
                           normalize)
        last_confusion = figures.pop("confusion")
        return figures

    def weights(epoch_done, record):
        return {"format": format_tag("hw3-p1-vit"), "arch": arch, "preprocess": preprocess,
                "class_names": class_names, "model": model.state_dict(),
                "epoch": epoch_done, "val_acc": record.get("val_acc")}

    def confusion_file(epoch):  # what report/build.py tabulates, without loading a model
        return [(Path(args.out) / "best_confusion.json", json.dumps(
            {"epoch": epoch, "class_names": class_names, "counts": last_confusion}) + "\n")]

    train_label = "train (label-smoothed)" if args.label_smoothing else "train"
    try:
        train_epochs(
            args, dist_info, device, train_loader, optimizer, scheduler, scaler, resume,
            train_epoch=train_epoch, validate=validate if val_loader else None,
            best=("val_acc", "val acc {:.4f}"), weights=weights, best_files=confusion_file,
            report_epoch=_report_epoch,
            # a backward pass costs two forward passes; a frozen backbone has none (the
            # head's is negligible)
            flops_per_image=(1 if args.freeze_backbone else 3) * forward_flops_per_image(model),
            curves=[("loss", "cross-entropy", [("train_loss", train_label),
                                               ("val_loss", "validation")]),
                    ("validation accuracy", "accuracy", [("val_acc", "validation")])])
    finally:  # the DDP model goes before its process group: see distributed()
        net = None


def build_loaders(args, preprocess, train_samples, val_samples, workers, device, dist_info):
    """The training loader (EpochLoader) and this process's validation loader, or None; their
    batches are uint8 images (ScaleNormalize makes the model's input of them on the device).

    With --image-cache on the images are decoded once (by the workers) and the loaders run in
    this process, augmenting on the device; with ram they are decoded once into RAM and the
    workers augment them; else the workers decode and augment every epoch."""
    size = preprocess["image_size"]
    augment = train_transform(size, args.augment, args.min_crop, args.crop, args.flip)
    cache = args.image_cache
    if cache == "auto":
        cache = "on" if device.type == "cuda" else "off"
    if cache in ("on", "ram"):
        # the workers that augment in RAM are forked after the decoding: they share its pages
        where = device if cache == "on" else torch.device("cpu")
        # the decoding workers hand over one image at a time: a training image at its own size,
        # a validation image resized
        largest = max((decoded_bytes(path) for path, _ in train_samples), default=0)
        train_set = DecodedImages(train_samples, v2.ToImage(), augment, where, fit_shared_memory(
            workers, largest, dist_info.local_world_size))
        val_set = DecodedImages(val_samples, eval_resize(size), None, where, fit_shared_memory(
            workers, 3 * math.prod(size), dist_info.local_world_size)) if val_samples else None
        workers, pin_memory = (0, False) if cache == "on" else (workers, None)
    else:
        train_set = LabelledImages(train_samples, augment)
        val_set = LabelledImages(val_samples, eval_resize(size))
        pin_memory = None
    # a validation batch (twice a training one) of uint8 images, the larger
    workers = fit_shared_memory(workers, 2 * args.batch_size * 3 * math.prod(size),
                                dist_info.local_world_size)
    train_loader = EpochLoader(train_set, args.batch_size, workers, collate_skip, device,
                               dist_info, args.seed, pin_memory, items_on_device=cache == "on")
    val_loader = validation_loader(val_set, args.batch_size * 2, workers, collate_skip, device,
                                   dist_info, pin_memory) if val_samples else None
    return train_loader, val_loader


def _model_for_run(args, class_names, resume):
    """(model, arch, preprocess) of the run: resumed, from --pretrained weights, or random."""
    seed_everything(args.seed)  # the model's random initialisation
    if resume is not None:
        if resume["class_names"] != class_names:
            raise UserError(f"{args.resume} was trained on other classes than {args.train_dir}")
        arch = resume["arch"]
    else:
        arch = make_arch(args.model, len(class_names), args.image_size)
    model = build_model(arch, drop_path=args.drop_path)
    if resume is not None:
        model.load_state_dict(resume["model"])
    elif args.pretrained:
        _load_pretrained(model, args.pretrained)
    if args.freeze_backbone:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("head.")
    preprocess = {"image_size": list(arch["image_size"]), "mean": list(DEFAULT_MEAN),
                  "std": list(DEFAULT_STD)}
    if arch["vit_kwargs"] is None:  # a timm architecture brings its own normalisation
        preprocess.update(mean=list(model.default_cfg["mean"]), std=list(model.default_cfg["std"]))
    return model, arch, preprocess


def _report_epoch(stats, improved):
    summary = f"epoch {stats['epoch']}: train loss {stats['train_loss']:.4f}"
    if "val_acc" in stats:
        summary += (f", val loss {stats['val_loss']:.4f}, val acc {stats['val_acc']:.4f}"
                    + (" (best)" if improved else ""))
    print0(summary + f", {stats['images_per_s']:.1f} images/s, "
           f"{stats['train_tflops']:.3f} TFLOP/s")


def _load_pretrained(model, path):
    obj = load_checkpoint(path)
    check_format(obj, "hw3-p1-vit", path)
    old_grid = None
    if isinstance(obj, dict) and "arch" in obj:  # a checkpoint of this project
        arch = obj["arch"]
        old_grid = [s // p for s, p in zip(arch["image_size"], model.patch_embed.patch_size)]
    adapted = load_weights(model, unwrap_state_dict(obj, path), path, old_grid)
    if any(a.startswith("new head") for a in adapted):
        # A zero head starts from uniform predictions, as in the ViT paper's fine-tuning.
        torch.nn.init.zeros_(model.head.weight)
        torch.nn.init.zeros_(model.head.bias)
    print0(f"loaded {path}" + "".join(f"; {a}" for a in adapted))


def _mixing(args, num_classes):
    choices = []
    if args.mixup > 0:
        choices.append(v2.MixUp(alpha=args.mixup, num_classes=num_classes))
    if args.cutmix > 0:
        choices.append(v2.CutMix(alpha=args.cutmix, num_classes=num_classes))
    return v2.RandomChoice(choices) if choices else None


@torch.inference_mode()
def predict_files(model, preprocess, paths, device, batch_size=64, workers=None,
                  precision="auto"):
    """Class index for each readable file in ``paths``: {path: index}. Unreadable files are
    named on stderr by the dataset and are absent from the result."""
    dataset = ImageFileDataset(paths, eval_resize(preprocess["image_size"]))
    normalize = ScaleNormalize(preprocess["mean"], preprocess["std"])
    workers = fit_shared_memory(share_cores(workers, device),
                                batch_size * 3 * math.prod(preprocess["image_size"]))
    loader = DataLoader(dataset, batch_size, num_workers=workers, collate_fn=collate_skip,
                        pin_memory=device.type == "cuda")
    model.eval().to(device)
    found = []  # (indices, labels left on the device): read at the end, so no batch waits for it
    for batch in tqdm(loader, desc="predict", disable=not is_main_process(), dynamic_ncols=True):
        if batch is None:
            continue
        images, indices = batch
        with autocast(device, precision):
            logits = model(normalize(images.to(device, non_blocking=True)))
            found.append((indices.tolist(), logits.argmax(1)))
    return {dataset.paths[index]: label for indices, labels in found
            for index, label in zip(indices, labels.tolist())}
