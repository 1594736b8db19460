"""Fine-tune a Vision Transformer on a labelled image folder.

    python p1/train.py --train-dir p1_data/train --val-dir p1_data/val \
        --pretrained checkpoints/B_16_imagenet1k.pth --out runs/vit
    torchrun --nproc_per_node=4 p1/train.py ...      # several GPUs, one process each
    python p1/train.py ... --resume runs/vit/last.pt  # the same command continues a run
"""
import argparse
import os
from pathlib import Path

from hw3core.cli import add_device_options, at_least, parse_run_args, parser, run_cli
from hw3core.errors import UserError
from p1.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]

# The defaults of the options left out: fine-tuning pretrained weights (the recipe for this task)
# and training from random weights (--pretrained none), where SGD at 1e-3 stays at chance.
FINE_TUNING = {"optimizer": "sgd", "lr": 1e-3, "weight_decay": 0.0}
FROM_SCRATCH = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}


def parse_args(argv=None):
    p = parser(__doc__)
    data = p.add_argument_group("data")
    data.add_argument("--train-dir", required=True,
                      help="{label}_{id}.jpg files or class subfolders")
    data.add_argument("--val-dir", help="validation images, same layout; picks best.pt")
    data.add_argument("--out", required=True, help="folder for checkpoints, metrics and curves")
    data.add_argument("--workers", type=at_least(0), help="DataLoader worker processes "
                      "(default: none on a CPU, up to 4 beside a GPU; never more than the cores "
                      "less one, nor than /dev/shm has room for)")
    data.add_argument("--image-cache", choices=("auto", "on", "ram", "off"), default="auto",
                      help="on: decode each image once into uint8 tensors (on the GPU where they "
                      "fit) and augment there, in this process; ram: decode once into RAM and "
                      "augment in the --workers; off: decode and augment every epoch in the "
                      "--workers; auto: on with CUDA, off on a CPU (%(default)s)")
    model = p.add_argument_group("model")
    model.add_argument("--model", default="B_16_imagenet1k",
                       help=f"a preset ({', '.join(PRESETS)}) or any timm ViT name (%(default)s)")
    model.add_argument("--pretrained", help="pytorch-pretrained-vit or timm state dict, or a "
                       "checkpoint of this project, to start from; none: random weights. "
                       "Default: for B_16_imagenet1k, the file hw3_download.sh writes")
    model.add_argument("--image-size", type=at_least(1), nargs="+", metavar=("H", "W"),
                       help="input size (one value: square); default: the model's")
    model.add_argument("--freeze-backbone", action=argparse.BooleanOptionalAction, default=False,
                       help="train the classification head only (fixed feature extractor)")
    model.add_argument("--drop-path", type=at_least(0.0, float, below=1.0), default=0.1,
                       help="stochastic depth rate (%(default)s)")
    optim = p.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=at_least(1), default=10, help="(%(default)s)")
    optim.add_argument("--batch-size", type=at_least(1), default=32,
                       help="images per process and step (%(default)s)")
    optim.add_argument("--grad-accum", type=at_least(1), default=1,
                       help="micro-batches per optimizer step (%(default)s)")
    optim.add_argument("--optimizer", choices=("sgd", "adamw"),
                       help="SGD with momentum 0.9, or AdamW (sgd; adamw from random weights)")
    optim.add_argument("--lr", type=at_least(0.0, float),
                       help="peak learning rate, after warm-up (0.001)")
    optim.add_argument("--weight-decay", type=at_least(0.0, float),
                       help="on weight matrices only (0; 0.05 from random weights)")
    optim.add_argument("--warmup-epochs", type=at_least(0.0, float), default=1.0,
                       help="linear warm-up to --lr (%(default)s)")
    optim.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                       help="after the warm-up: cosine decay to 0, or --lr held (%(default)s)")
    optim.add_argument("--label-smoothing", type=at_least(0.0, float, below=1.0), default=0.1,
                       help="(%(default)s)")
    optim.add_argument("--clip-grad", type=at_least(0.0, float), default=1.0,
                       help="max gradient norm; 0: off (%(default)s)")
    aug = p.add_argument_group("augmentation")
    aug.add_argument("--augment", choices=("randaugment", "trivialaugment", "none"),
                     default="randaugment", help="policy after crop and flip (%(default)s)")
    aug.add_argument("--crop", action=argparse.BooleanOptionalAction, default=True,
                     help="random resized crop; --no-crop: a plain resize to the input size "
                     "(on)")
    aug.add_argument("--min-crop", type=at_least(0.0, float, most=1.0), default=0.25,
                     help="smallest area fraction of the random resized crop (%(default)s: 74%% "
                     "of crops keep at least half of an object a tenth of the photo, 88.6%% at "
                     "0.5; bench/min_crop.py)")
    aug.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                     help="random horizontal flip (on)")
    aug.add_argument("--mixup", type=at_least(0.0, float), default=0.0,
                     help="MixUp alpha; 0: off (%(default)s)")
    aug.add_argument("--cutmix", type=at_least(0.0, float), default=0.0,
                     help="CutMix alpha; 0: off (%(default)s)")
    run = p.add_argument_group("run")
    add_device_options(run, precision=True)
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--seed", type=int, default=0, help="(%(default)s)")
    run.add_argument("--resume", help="OUT/last.pt of an interrupted run: rerun the same "
                     "command with this added")
    args = parse_run_args(p, argv)
    if args.image_size and len(args.image_size) > 2:
        p.error("--image-size takes one or two values")
    return resolve_start(args)


def resolve_start(args):
    """Which weights the run starts from, and the recipe defaults that go with them.

    Training from random weights by accident (a forgotten --pretrained) gives a model at chance
    after hours: without --pretrained, B_16_imagenet1k starts from the file hw3_download.sh
    writes when it is there, and anything else stops with one line saying what to do. A resumed
    run goes on from its last.pt with its own recipe (open_run), needing neither.
    """
    if args.resume:
        return args
    if args.pretrained is None:
        folder = Path(os.environ.get("HW3_CKPT_DIR", ROOT / "checkpoints"))
        downloaded = folder / f"{args.model}.pth"
        if args.model != "B_16_imagenet1k":
            raise UserError(f"no weights to start {args.model} from: give --pretrained FILE, or "
                            "--pretrained none to train from random weights")
        if not downloaded.is_file():
            raise UserError(f"no weights to start {args.model} from: run bash hw3_download.sh "
                            f"(it writes {downloaded}), give --pretrained FILE, or --pretrained "
                            "none to train from random weights")
        args.pretrained = str(downloaded)
        print(f"starting from {downloaded} (hw3_download.sh's file; --pretrained to choose)",
              flush=True)
    scratch = args.pretrained.lower() == "none"
    if scratch:
        args.pretrained = None
        if args.freeze_backbone:
            raise UserError("--freeze-backbone trains the head on random features: give "
                            "--pretrained weights")
    for name, value in (FROM_SCRATCH if scratch else FINE_TUNING).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv=None):
    args = parse_args(argv)  # its errors before seconds of importing torch and timm
    from p1.engine import fit
    fit(args)


if __name__ == "__main__":
    run_cli(main)
