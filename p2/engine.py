"""Captioner training: the model's configuration from the options, optimizer, one epoch,
evaluation with generated captions, and the whole run (fit) with resumable checkpoints."""
import sys
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from hw3core.checkpoints import format_tag
from hw3core.errors import UserError
from hw3core.images import ImageFileDataset, collate_list
from hw3core.runtime import (autocast, distributed, fit_shared_memory, is_main_process,
                             print0, seed_everything, sum_over_ranks)
from hw3core.training import (EpochLoader, open_run, train_epochs, train_steps,
                              validation_loader, warmup_cosine, wrap_for_ranks)
from p2.configs import ARCHITECTURE_OPTIONS, CONFIGS
from p2.data import (CaptionPairs, caption_vocabulary, collate_pairs, pad_tokens, preprocess,
                     read_caption_file, tokenize_captions, train_transform)
from p2.decode import check_decoding_options, encode_images, greedy_search
from p2.metrics import bleu4, cider, words
from p2.model import build_model, load_captioner, make_config
from p2.tokenizer import END_ID, PAD_ID, START_ID, CaptionTokenizer


def config_from_args(args):
    """The configuration of a model from random weights that --config and the architecture
    options describe (p2/train.py has refused CATR's frozen batch norm unless asked for)."""
    overrides = dict(CONFIGS[args.config or "catr"])
    overrides.update({name: getattr(args, name) for name in (*ARCHITECTURE_OPTIONS, "dropout")
                      if getattr(args, name) is not None})
    return make_config(overrides)


def build_optimizer(model, lr, lr_backbone, weight_decay):
    """AdamW with CATR's two parameter groups: the backbone at ``lr_backbone``, the rest at
    ``lr``. A backbone rate of 0 freezes the backbone, as in DETR and CATR."""
    backbone, rest = [], []
    for name, param in model.named_parameters():
        if name.startswith("backbone."):
            param.requires_grad_(lr_backbone > 0)
            if lr_backbone > 0:
                backbone.append(param)
        elif param.requires_grad:
            rest.append(param)
    groups = [{"params": rest, "lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr_backbone})
    # one kernel for all parameters on a GPU, instead of several per parameter group
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay,
                             fused=next(model.parameters()).is_cuda)


def caption_loss(logits, tokens, reduction="mean", output_tokens=None):
    """Cross-entropy of the logits at positions 0..L-2 against the tokens at 1..L-1.

    With ``output_tokens`` (sorted ids), ``logits`` are a restricted head's scores of those ids
    alone (Caption.head(restricted=True)), and every non-padding token must be one of them.
    CATR's own loss also scores the [PAD] after [SEP]; here padding is ignored, so the loss
    measures the caption alone and does not depend on how far a batch is padded.
    """
    targets = tokens[:, 1:]
    padding = targets == PAD_ID
    if output_tokens is not None:  # ids -> their columns among the restricted scores
        targets = torch.searchsorted(output_tokens, targets.contiguous())
    targets = targets.masked_fill(padding, -100)  # cross_entropy's ignore_index
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)


def train_one_epoch(model, loader, optimizer, scheduler, scaler, device, sums, stop, step_seed,
                    *, output_tokens=None, precision="auto", clip_grad=0.0, placeholder=None,
                    desc="train"):
    """hw3core.training.train_steps, teacher-forced, with the loss per caption token (its
    arguments up to ``step_seed``). ``output_tokens``: the bare model's, if restricted.
    ``placeholder``: (pixels, mask, tokens, padding) of one image and caption for the steps
    where this process, under torchrun, has no readable image."""
    def loss_of(batch):
        pixels, pixel_mask, tokens, padding = (t.to(device, non_blocking=True) for t in batch)
        with autocast(device, precision):
            logits = model(pixels, pixel_mask, tokens[:, :-1], padding[:, :-1], restricted=True)
        return (caption_loss(logits, tokens, output_tokens=output_tokens),
                (~padding[:, 1:]).sum(), len(pixels))

    train_steps(model, loader, optimizer, scheduler, scaler, device, sums, stop, step_seed,
                loss_of=loss_of, placeholder_forward=lambda: model(*placeholder, restricted=True),
                clip_grad=clip_grad, desc=desc)


@torch.inference_mode()
def evaluate(model, loader, samples, token_ids, tokenizer, device, precision="auto", max_len=128,
             desc="val"):
    """Teacher-forced loss over every reference caption, and greedy captions scored against the
    references: BLEU-4, CIDEr-D and the share of images whose caption equals a reference (as
    words). Losses are summed exactly over ranks; captions are gathered from all of them. The
    loss leaves out reference words that a model with output_tokens cannot say.

    ``model`` is the bare captioner (not a DDP wrapper). ``samples`` are the [(path, captions)]
    that the loader's indices point into, ``token_ids`` their tokenize_captions.
    """
    model.eval()
    loss_sum = tokens_seen = 0.0
    generated = {}
    for batch in tqdm(loader, desc=desc, disable=not is_main_process(), dynamic_ncols=True,
                      leave=False):
        if not batch:  # every image of this batch was unreadable
            continue
        indices = [index for _, index in batch]
        with autocast(device, precision):
            encoded = encode_images(model, [image.to(device) for image, _ in batch])
            reference_ids = [ids for index in indices for ids in token_ids[index]]
            rows = torch.tensor([row for row, index in enumerate(indices)
                                 for _ in token_ids[index]], device=device)
            tokens, padding = pad_tokens(reference_ids, device)
            state = model.start_decoding(encoded)
            state.select(rows)
            logits, _ = model.decode(state, tokens[:, :-1], padding[:, :-1])
            if model.output_tokens is not None:  # words it cannot say would score infinite loss
                sayable = torch.isin(tokens, model.output_tokens)
                tokens = tokens.masked_fill(~sayable, PAD_ID)
                padding = padding | ~sayable
            loss_sum += caption_loss(logits, tokens, reduction="sum").item()
            tokens_seen += int((~padding[:, 1:]).sum())
            captions, _ = greedy_search(model, encoded, max_len)
        generated.update(zip(indices, (tokenizer.decode(ids) for ids in captions)))
    loss_sum, tokens_seen = sum_over_ranks([loss_sum, tokens_seen], device)
    if dist.is_available() and dist.is_initialized():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, generated)
        generated = {k: v for part in parts for k, v in part.items()}
    order = sorted(generated)
    candidates = [generated[i] for i in order]
    references = [samples[i][1] for i in order]
    exact = sum(words(c) in [words(r) for r in refs] for c, refs in zip(candidates, references))
    return {"val_loss": loss_sum / max(tokens_seen, 1),
            "val_bleu4": bleu4(candidates, references) if order else 0.0,
            "val_cider": cider(candidates, references) if order else 0.0,
            "val_exact": exact / max(len(order), 1), "val_images": len(order),
            "val_examples": candidates[:3]}


def build_scheduler(optimizer, args, batches_per_epoch):
    """The learning-rate schedule, stepped after every batch: --schedule cosine (warm-up, then
    cosine decay to 0), or CATR's step decay (divided by 10 every --lr-drop epochs)."""
    if args.schedule == "cosine":
        return warmup_cosine(optimizer, args.warmup, batches_per_epoch * args.epochs)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 ** (step // (args.lr_drop * batches_per_epoch)))


def _shortened(caption, most=80):
    """A caption for the epoch's line: an untrained model's run to hundreds of characters."""
    return caption if len(caption) <= most else caption[:most - 3].rstrip() + "..."


def _report_epoch(stats, improved):
    summary = f"epoch {stats['epoch']}: train loss {stats['train_loss']:.4f}"
    if "val_loss" in stats:
        summary += (f", val loss {stats['val_loss']:.4f}, BLEU-4 {stats['val_bleu4']:.3f}, "
                    f"CIDEr {stats['val_cider']:.3f}, exact {stats['val_exact']:.3f}"
                    + (" (best)" if improved else "")
                    + f"; e.g. {_shortened(stats['val_examples'][0])!r}")
    print0(summary + f"; {stats['images_per_s']:.1f} images/s")


def fit(args):
    """The whole run that train.py describes: data, model, resume, epochs, checkpoints."""
    with distributed() as dist_info:  # the run in a call of its own: see distributed()
        _fit(args, dist_info)


def _fit(args, dist_info):
    device, resume, workers = open_run(args, "hw3-p2-catr", dist_info)
    if not args.init:  # before tokenising a whole caption file; --init's config: below
        check_decoding_options(make_config(resume["config"]) if resume
                               else config_from_args(args), args.max_len)
    tokenizer = CaptionTokenizer()
    train_samples = read_caption_file(args.train_json, args.train_dir)
    val_samples = read_caption_file(args.val_json, args.val_dir) if args.val_json else []
    train_ids = tokenize_captions(train_samples, tokenizer, args.max_len)
    val_ids = tokenize_captions(val_samples, tokenizer, args.max_len)
    model, config = _model_for_run(args, resume, caption_vocabulary(train_ids))
    if args.init:
        check_decoding_options(config, args.max_len)
    _check_output_vocab(args, config, train_ids, val_ids, tokenizer)
    # said after every refusal: a caption cut short loses its [SEP], and the model learns to
    # stop from the others only
    cut = sum(END_ID not in ids for captions in train_ids for ids in captions)
    if cut:
        print0(f"warning: {args.train_json}: {cut} of {sum(map(len, train_ids))} captions are "
               f"longer than --max-len {args.max_len} positions and were cut, losing their end; "
               "raise --max-len to train on them whole", file=sys.stderr)
    model.to(device)
    train_loader, val_loader = build_loaders(args, config, train_samples, train_ids,
                                             val_samples, workers, device, dist_info)
    optimizer = build_optimizer(model, args.lr, args.lr_backbone, args.weight_decay)
    scheduler = build_scheduler(optimizer, args, len(train_loader))
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    net = wrap_for_ranks(model, device, dist_info)
    placeholder = _placeholder_pair(config["input_size"], device)
    print0(f"captioner {config['backbone']}, hidden {config['hidden_dim']}, "
           f"{config['enc_layers']}+{config['dec_layers']} layers: "
           f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters; "
           f"{len(train_loader.dataset)} training captions of {len(train_samples)} images, "
           f"{len(val_samples)} val images; {dist_info.world_size} process(es) on "
           f"{device.type}")

    def train_epoch(e):
        train_one_epoch(net, e.loader, optimizer, scheduler, scaler, device, e.sums, e.stop,
                        e.step_seed, output_tokens=model.output_tokens,
                        precision=args.precision, clip_grad=args.clip_grad,
                        placeholder=placeholder, desc=f"epoch {e.index + 1}/{args.epochs}")

    def validate():
        return evaluate(model, val_loader, val_samples, val_ids, tokenizer, device,
                        args.precision, args.max_len)

    def weights(epoch_done, record):
        return {"format": format_tag("hw3-p2-catr"), "config": config,
                "model": model.state_dict(), "epoch": epoch_done,
                "val": {k: v for k, v in record.items() if k.startswith("val_")}}

    try:
        train_epochs(
            args, dist_info, device, train_loader, optimizer, scheduler, scaler, resume,
            train_epoch=train_epoch, validate=validate if val_loader else None,
            best=("val_cider", "val CIDEr {:.3f}"), weights=weights, report_epoch=_report_epoch,
            curves=[("loss", "cross-entropy per caption token",
                     [("train_loss", "train"), ("val_loss", "validation")]),
                    ("validation captions (greedy)", "score (0 to 1)",
                     [("val_bleu4", "BLEU-4"), ("val_exact", "exact caption share")]),
                    # CIDEr-D runs to 10, which would flatten the others on a shared axis
                    ("validation CIDEr-D (greedy)", "CIDEr-D", [("val_cider", "CIDEr-D")])])
    finally:  # the DDP model goes before its process group: see distributed()
        net = None


def build_loaders(args, config, train_samples, train_ids, val_samples, workers, device,
                  dist_info):
    """The training loader (EpochLoader, one item per caption) and this process's validation
    loader (images; evaluate() gathers every process's captions), or None."""
    side = config["input_size"]  # a batch: float32 pixels and a bool padding mask, at most
    workers = fit_shared_memory(workers, args.batch_size * side * side * (3 * 4 + 1),
                                dist_info.local_world_size)
    train_loader = EpochLoader(CaptionPairs(train_samples, train_ids, train_transform(
        side, args.rotate, args.color_jitter, args.hflip)),
        args.batch_size, workers, collate_pairs, device, dist_info, args.seed)
    val_loader = validation_loader(ImageFileDataset([path for path, _ in val_samples],
                                                    partial(preprocess, side=side)),
                                   args.batch_size, workers, collate_list, device,
                                   dist_info) if val_samples else None
    return train_loader, val_loader


def _placeholder_pair(side, device):
    """(pixels, mask, tokens, padding) of one blank image and caption: the input of a process
    that has no readable image in a step (join_the_gradient_all_reduce)."""
    return (torch.zeros(1, 3, side, side, device=device),
            torch.zeros(1, side, side, dtype=torch.bool, device=device),
            torch.full((1, 1), START_ID, device=device),
            torch.zeros(1, 1, dtype=torch.bool, device=device))


def _model_for_run(args, resume, train_vocabulary):
    """(model, config) of the run: resumed; or from --init's weights and configuration, or
    fresh, with --dropout and --output-vocab applied. ``train_vocabulary``: the word pieces of the
    training captions (caption_vocabulary)."""
    if resume is not None:
        config = make_config(resume["config"])
        if args.output_vocab is not None and (
                _requested_output_tokens(args, train_vocabulary) != config["output_tokens"]):
            raise UserError(f"--resume {args.resume}: that run has another output vocabulary; "
                            "leave out --output-vocab or start a new run")
        model = build_model(config)
        model.load_state_dict(resume["model"])
        return model, config
    if args.init:  # with no architecture options (p2/train.py)
        model, config = load_captioner(args.init)
    else:
        seed_everything(args.seed)  # the same initial weights on every rank
        config = config_from_args(args)
        model = build_model(config)
    changes = {}
    if args.dropout is not None:
        changes["dropout"] = args.dropout
    if args.output_vocab is not None:
        changes["output_tokens"] = _requested_output_tokens(args, train_vocabulary)
    if any(config[key] != value for key, value in changes.items()):
        config = make_config({**config, **changes})
        state_dict = model.state_dict()
        model = build_model(config)
        model.load_state_dict(state_dict)
    return model, config


def _requested_output_tokens(args, train_vocabulary):
    """The output_tokens that --output-vocab (given) asks for."""
    return None if args.output_vocab == "full" else train_vocabulary


def _check_output_vocab(args, config, train_ids, val_ids, tokenizer):
    """Refuse training captions the model cannot say (their loss would be infinite); warn about
    such validation words."""
    sayable = config["output_tokens"]
    if sayable is None:
        return
    for name, token_ids, refuse in ((args.train_json, train_ids, True),
                                    (args.val_json, val_ids, False)):
        unsayable = sorted(set(caption_vocabulary(token_ids)) - set(sayable))
        if not unsayable:
            continue
        problem = (f"{name}: {len(unsayable)} word pieces of its captions (e.g. "
                   f"{', '.join(tokenizer.pieces(unsayable[:3]))}) are not among the "
                   f"{len(sayable)} this model can say")
        if refuse:
            raise UserError(problem + "; train with --output-vocab captions or full")
        print0(f"warning: {problem}; val_loss leaves them out")
