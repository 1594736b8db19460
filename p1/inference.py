"""Predict the class of every image in a folder and write OUT.csv with rows `filename,label`.

    python p1/inference.py --images test_dir --out output/pred.csv [--checkpoint C]

The checkpoint defaults to $HW3_P1_CKPT, else checkpoints/p1_vit.pt beside this project. It may
be a train.py checkpoint (labels are its class names) or a bare pytorch-pretrained-vit or timm
state dict (labels are the model's own class ids).
"""
import csv
import io
import os
from pathlib import Path

from hw3core.cli import (add_device_options, at_least, parser, require_default_checkpoint,
                         run_cli)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "p1_vit.pt"


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--images", required=True, help="folder of images (subfolders are ignored)")
    p.add_argument("--out", required=True, help="CSV file to write; its folder is created")
    p.add_argument("--checkpoint",  # an empty HW3_P1_CKPT is unset, as in hw3_2.sh's ${:-}
                   default=os.environ.get("HW3_P1_CKPT") or str(DEFAULT_CHECKPOINT),
                   help="train.py checkpoint or bare ViT state dict (%(default)s)")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="(%(default)s)")
    p.add_argument("--workers", type=at_least(0),
                   help="DataLoader worker processes (default: none on a CPU, up to 4 beside "
                   "a GPU)")
    add_device_options(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from hw3core.files import require_writable_file, write_text_atomic
    from hw3core.images import (report_written, require_images, require_not_an_input,
                                require_some_read)

    # before seconds of importing torch, and minutes of prediction
    paths = require_images(args.images)
    require_default_checkpoint(args.checkpoint, DEFAULT_CHECKPOINT, "copy a run's best.pt (or "
                               "last.pt) there (README: Fine-tune), or name one in HW3_P1_CKPT "
                               "(p1/inference.py: or --checkpoint)")
    require_not_an_input(args.out, paths)
    require_writable_file(args.out)
    from hw3core.runtime import pick_device
    from p1.engine import predict_files
    from p1.model import load_classifier

    model, preprocess, class_names = load_classifier(args.checkpoint)
    predictions = predict_files(model, preprocess, paths, pick_device(args.device),
                                args.batch_size, args.workers)
    require_some_read(len(predictions), paths, args.images)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["filename", "label"])
    writer.writerows((path.name, class_names[predictions[path]]) for path in paths
                     if path in predictions)
    write_text_atomic(args.out, text.getvalue())
    report_written(len(predictions), paths, "predictions", args.out)


if __name__ == "__main__":
    run_cli(main)
