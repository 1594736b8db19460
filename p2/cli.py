"""What the captioning scripts (inference.py, visualize.py) share on the command line: their
options, the default checkpoint and loading the model they name. No torch at import: --help and
argument errors answer at once."""
import os
from pathlib import Path

from hw3core.cli import add_device_options, at_least, require_default_checkpoint

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "catr_v3.pth"


def add_captioning_args(p):
    p.add_argument("--checkpoint",  # an empty HW3_P2_CKPT is unset, as shells' ${:-} take it
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


def require_checkpoint(args):
    """The default checkpoint missing is said with how to get it, before torch is imported."""
    require_default_checkpoint(args.checkpoint, DEFAULT_CHECKPOINT, "bash hw3_download.sh "
                               "downloads it, or name another in HW3_P2_CKPT (p2/inference.py "
                               "and p2/visualize.py: or --checkpoint)")


def load_for_captioning(args):
    """(model on its device, tokenizer) for parsed captioning arguments."""
    from hw3core.runtime import pick_device
    from p2.model import load_captioner
    from p2.tokenizer import CaptionTokenizer

    model, _ = load_captioner(args.checkpoint)
    return model.to(pick_device(args.device)), CaptionTokenizer()
