"""Caption every image in a folder and write one JSON line per image.

    python p2/inference.py --checkpoint checkpoints/catr_v3.pth --images DIR --out captions.jsonl

Each line is {"file": name, "caption": text, "tokens": [101, ..., 102]}: every generated id, [CLS]
first and [SEP] last ([SEP] is missing when --max-len stopped the caption), in file-name order.
The checkpoint may be a released CATR checkpoint, a bare state dict or one of this project's.
"""
import json
import os
from pathlib import Path

from hw3core.cli import (add_device_options, at_least, parser, require_default_checkpoint,
                         run_cli)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "catr_v3.pth"


def add_captioning_args(p):
    """The options inference.py and visualize.py share."""
    p.add_argument("--checkpoint",  # an empty HW3_P2_CKPT is unset, as in hw3_2.sh's ${:-}
                   default=os.environ.get("HW3_P2_CKPT") or str(DEFAULT_CHECKPOINT),
                   help="released CATR checkpoint, bare state dict or project checkpoint "
                   "(default: $HW3_P2_CKPT, else checkpoints/catr_v3.pth)")
    p.add_argument("--images", required=True, help="folder of images (other files are ignored)")
    p.add_argument("--batch-size", type=at_least(1), default=8,
                   help="images decoded together (%(default)s)")
    p.add_argument("--workers", type=at_least(0), help="DataLoader worker processes reading the "
                   "images (default: none on a CPU, up to 4 beside a GPU; never more than the "
                   "cores less one)")
    # --beam and --max-len are checked in one place for every caller: check_decoding_options
    p.add_argument("--beam", type=int, default=1,
                   help="beam size; 1: greedy, as CATR (%(default)s)")
    p.add_argument("--max-len", type=int, default=128,
                   help="caption positions, [CLS] included (%(default)s, as CATR)")
    add_device_options(p)


def load_for_captioning(args):
    """(model on its device, tokenizer) for parsed captioning arguments."""
    from hw3core.runtime import pick_device
    from p2.model import load_captioner
    from p2.tokenizer import CaptionTokenizer

    model, _ = load_captioner(args.checkpoint)
    return model.to(pick_device(args.device)), CaptionTokenizer()


def require_checkpoint(args):
    """The default checkpoint missing is said with how to get it, before torch is imported."""
    require_default_checkpoint(args.checkpoint, DEFAULT_CHECKPOINT, "bash hw3_download.sh "
                               "downloads it, or give --checkpoint (or HW3_P2_CKPT)")


def parse_args(argv=None):
    p = parser(__doc__)
    add_captioning_args(p)
    p.add_argument("--out", required=True, help="JSON-lines file to write; its folder is created")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from hw3core.files import require_writable_file, write_text_atomic
    from hw3core.images import (report_written, require_images, require_not_an_input,
                                require_some_read)

    # before seconds of importing torch, and the captioning
    paths = require_images(args.images)
    require_checkpoint(args)
    require_not_an_input(args.out, paths)
    require_writable_file(args.out)
    from p2.decode import caption_folder

    model, tokenizer = load_for_captioning(args)
    lines = [json.dumps({"file": path.name, "caption": tokenizer.decode(result.tokens),
                         "tokens": result.tokens}, ensure_ascii=False)
             for path, _, result in caption_folder(model, paths, args.batch_size, args.workers,
                                                   beam=args.beam, max_len=args.max_len)]
    require_some_read(len(lines), paths, args.images)
    write_text_atomic(args.out, "".join(line + "\n" for line in lines))
    report_written(len(lines), paths, "captions", args.out)


if __name__ == "__main__":
    run_cli(main)
