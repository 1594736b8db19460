"""Train the CATR captioner on a COCO-format caption file and its image folder.

    python p2/train.py --train-json captions_train.json --train-dir train/ \
        --val-json captions_val.json --val-dir val/ --init checkpoints/catr_v3.pth --out runs/catr
    python p2/train.py ... --config small --lr-backbone 1e-4   # a CPU-sized model from scratch
    torchrun --nproc_per_node=4 p2/train.py ...               # several GPUs, one process each
    python p2/train.py ... --resume runs/catr/last.pt         # the same command continues a run

Defaults are CATR's recipe: AdamW, lr 1e-4 (backbone 1e-5), weight decay 1e-4, gradient norm
clipped at 0.1, learning rates divided by 10 every 20 epochs, right-angle rotations and colour
jitter. OUT gets metrics.jsonl, last.pt (the whole run) and best.pt (highest val CIDEr), which
p2/inference.py, p2/visualize.py and hw3_2.sh load as they are.
"""
import argparse

from hw3core.cli import add_device_options, at_least, parse_run_args, parser, run_cli
from hw3core.errors import UserError
from p2.configs import ARCHITECTURE_OPTIONS, BACKBONE_LAYERS, BACKBONES, CATR_CONFIG, CONFIGS


def parse_args(argv=None):
    p = parser(__doc__)
    data = p.add_argument_group("data")
    data.add_argument("--train-json", required=True, help="COCO-format caption file")
    data.add_argument("--train-dir", required=True, help="folder its file names are relative to")
    data.add_argument("--val-json", help="validation captions; picks best.pt by CIDEr")
    data.add_argument("--val-dir", help="folder of the validation images")
    data.add_argument("--out", required=True, help="folder for checkpoints and metrics")
    data.add_argument("--max-len", type=int, default=128,
                      help="caption positions, [CLS] and [SEP] included (%(default)s)")
    data.add_argument("--workers", type=at_least(0), help="DataLoader worker processes "
                      "(default: none on a CPU, up to 4 beside a GPU; never more than the cores "
                      "less one, nor than /dev/shm has room for)")
    model = p.add_argument_group("model (a new run; --init and --resume bring their own)")
    model.add_argument("--init", help="released CATR checkpoint, bare state dict or checkpoint "
                       "of this project to start from; without it, random weights (with "
                       "--config small or --backbone-norm)")
    model.add_argument("--config", choices=tuple(CONFIGS),
                       help="catr: CATR's own (default); small: ResNet-18 to layer2 with batch "
                       "norm, 128-pixel input, width 128, 2+3 layers")
    model.add_argument("--backbone", choices=BACKBONES)
    model.add_argument("--dilation", action=argparse.BooleanOptionalAction,
                       help="dilate the last ResNet stage (stride 16 instead of 32)")
    model.add_argument("--backbone-layer", choices=BACKBONE_LAYERS,
                       help="last ResNet stage kept, stride 8, 16 or 32 (CATR: layer4, dilated)")
    model.add_argument("--backbone-norm", choices=("frozen", "batch"),
                       help="frozen batch norm (CATR's) or trainable batch norm for a backbone "
                       "trained from scratch")
    model.add_argument("--input-size", type=at_least(1),
                       help="longer image side in pixels (CATR: 299)")
    model.add_argument("--hidden-dim", type=at_least(1))
    model.add_argument("--nheads", type=at_least(1))
    model.add_argument("--enc-layers", type=at_least(0))
    model.add_argument("--dec-layers", type=at_least(1))
    model.add_argument("--dim-feedforward", type=at_least(1))
    model.add_argument("--dropout", type=at_least(0.0, float, below=1.0),
                       help="(CATR: 0.1; may change an --init model's)")
    model.add_argument("--output-vocab", choices=("full", "captions"),
                       help="full: the head scores all 30,522 word pieces (CATR); captions: only "
                       "those of the training captions, about twice as fast for a small model, "
                       "which can then say no other word (default: --init's, else full)")
    optim = p.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=at_least(1), default=30, help="(%(default)s)")
    optim.add_argument("--batch-size", type=at_least(1), default=32,
                       help="captions per process and step (%(default)s)")
    optim.add_argument("--lr", type=at_least(0.0, float), default=1e-4,
                       help="transformer and head (%(default)s)")
    optim.add_argument("--lr-backbone", type=at_least(0.0, float), default=1e-5,
                       help="ResNet backbone; 0 freezes it (%(default)s)")
    optim.add_argument("--weight-decay", type=at_least(0.0, float), default=1e-4,
                       help="(%(default)s)")
    optim.add_argument("--schedule", choices=("step", "cosine"), default="step",
                       help="step: CATR's, divided by 10 every --lr-drop epochs; cosine: linear "
                       "warm-up for --warmup steps, then cosine decay to 0 (%(default)s)")
    optim.add_argument("--lr-drop", type=at_least(1), default=20,
                       help="divide the learning rates by 10 every this many epochs (%(default)s)")
    optim.add_argument("--warmup", type=at_least(0), default=50,
                       help="warm-up steps of the cosine schedule (%(default)s)")
    optim.add_argument("--clip-grad", type=at_least(0.0, float), default=0.1,
                       help="max gradient norm; 0: off (%(default)s)")
    aug = p.add_argument_group("augmentation (CATR's, except the flip)")
    aug.add_argument("--rotate", action=argparse.BooleanOptionalAction, default=True,
                     help="rotate by 0, 90, 180 or 270 degrees; off for captions that say where "
                     "things are (on)")
    aug.add_argument("--color-jitter", action=argparse.BooleanOptionalAction, default=True,
                     help="brightness, contrast and saturation (on)")
    aug.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=False,
                     help="random horizontal flip; CATR's recipe has it, but it makes 'left of' "
                     "and 'right of' captions wrong (off)")
    run = p.add_argument_group("run")
    add_device_options(run, precision=True)
    run.add_argument("--seed", type=int, default=0, help="(%(default)s)")
    run.add_argument("--resume", help="OUT/last.pt of an interrupted run: rerun the same "
                     "command with this added")
    args = parse_run_args(p, argv)
    if bool(args.val_json) != bool(args.val_dir):
        p.error("--val-json and --val-dir go together")
    return check_start(args)


def check_start(args):
    """Refuse, before the run opens, a start that cannot be: options that describe an
    architecture beside --init, whose checkpoint fixes it; and without --init, CATR's frozen batch
    norm, which at its initial values is the identity (a backbone trained from scratch without
    batch norm rarely learns). A resumed run goes on with its own model (open_run)."""
    if args.resume:
        return args
    if args.init:
        given = [f"--{name.replace('_', '-')}" for name in ("config", *ARCHITECTURE_OPTIONS)
                 if getattr(args, name) is not None]
        if given:
            raise UserError(f"--init {args.init} fixes the architecture; leave out "
                            f"{', '.join(given)}")
    elif (args.backbone_norm is None
          and {**CATR_CONFIG, **CONFIGS[args.config or "catr"]}["backbone_norm"] == "frozen"):
        raise UserError("no weights to start from: give --init checkpoints/catr_v3.pth (bash "
                        "hw3_download.sh writes it) to fine-tune CATR, or --config small or "
                        "--backbone-norm batch to train from random weights (CATR's frozen batch "
                        "norm would not learn)")
    return args


def main(argv=None):
    args = parse_args(argv)  # its errors and refusals before seconds of importing torch
    from p2.engine import fit
    fit(args)


if __name__ == "__main__":
    run_cli(main)
