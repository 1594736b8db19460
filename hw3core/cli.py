"""What every entry script shares on the command line: the wrapper that turns a UserError or a
signal into one line and an exit status, the argparse type for bounded numbers, and
the --device and --precision options. No torch here: scripts import this before parsing, and
their --help stays fast."""
import argparse
import math
import os
import signal
import sys
import threading
from pathlib import Path

from .errors import Interrupted, UserError
from .files import no_empty_folders_left_on_failure


class _CtrlC:
    """Python's SIGINT handler that also remembers the signal: a KeyboardInterrupt raised while a
    garbage-collector callback runs is printed and dropped by Python, and the run would go on to
    exit 0 as if never interrupted."""

    def __init__(self):
        self.seen = False

    def __call__(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt


def run_cli(main, argv=None):
    """Call ``main(argv)`` and return what it returns (a benchmark's exit status); a UserError
    becomes ``error: ...`` on stderr and exit status 2, an Interrupted its message and the
    conventional status of its signal (128 + signal number). Output folders that a failed run
    made and left empty are removed."""
    ctrl_c = _CtrlC()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, ctrl_c) if in_main_thread else None
    try:
        with no_empty_folders_left_on_failure():
            status = main(argv)
        if ctrl_c.seen:  # the KeyboardInterrupt was dropped (see _CtrlC)
            raise KeyboardInterrupt
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process stops so, together
            print(str(err), file=sys.stderr)
        sys.exit(128 + err.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    return status


class _OneLineErrors(argparse.ArgumentParser):
    def error(self, message):  # argparse prints the whole usage first: 20 lines for train.py
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser(doc):
    """An ArgumentParser described by the first paragraph of a script's docstring ``doc``, on one
    line (a first sentence may run over several), that says a bad command line in one line."""
    return _OneLineErrors(description=" ".join(doc.split("\n\n")[0].split()))


def at_least(minimum, kind=int, below=None, most=None):
    """argparse ``type=``: a finite ``kind`` number no smaller than ``minimum`` (and smaller than
    ``below``, or at most ``most``, where given). argparse reports a bad one as ``error: argument
    --epochs: must be at least 1, not 0`` and exits with status 2, instead of a traceback from
    deep in torch when training starts, or a run that trains to NaN."""
    bound = (f" and below {below}" if below is not None else
             f" and at most {most}" if most is not None else "")

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        # also refuses nan and inf
        if not (value >= minimum and math.isfinite(value)
                and (below is None or value < below) and (most is None or value <= most)):
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{bound}, not {text}")
        return value
    return parse


def add_device_options(parser, precision=False):
    """--device (auto: CUDA when a GPU is visible, else the CPU) and, for training, --precision
    (auto: bf16 autocast on CUDA, fp32 on a CPU); hw3core.runtime.pick_device and autocast read
    them."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="(%(default)s: cuda when a GPU is visible)")
    if precision:
        parser.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"),
                            default="auto", help="auto: bf16 autocast on CUDA, fp32 on a CPU")


def require_default_checkpoint(path, default, how_to_get_it):
    """A UserError saying ``how_to_get_it`` when ``path`` is the script's ``default`` checkpoint
    and is not there yet (before any slow import)."""
    if Path(path) == Path(default) and not Path(path).exists():
        raise UserError(f"checkpoint not found: {path}: {how_to_get_it}")


def layer_option(layer, count, what):
    """--layer ``layer`` of ``count`` ``what`` (0 the first, negative values from the end, as
    Python indexes), counted from the first; a UserError names the range."""
    if not -count <= layer < count:
        raise UserError(f"--layer {layer}: the model has {count} {what}, 0 to {count - 1} (or "
                        f"-{count} to -1 from the end)")
    return layer % count


# where a run's files are and how it runs, not what it computes: a resumed run may name other
# ones (the data moved, another machine)
RESUME_MAY_CHANGE = {"resume", "out", "train_dir", "train_json", "workers", "device",
                     "image_cache", "compile"}
# the weights a run started from: a resumed run loads its last.pt instead, and its args.json
# keeps the run's record of them (the report names them), whatever the command says
STARTING_WEIGHTS = {"pretrained", "init"}


def parse_run_args(p, argv=None):
    """A training script's options. With --resume, the options left out are None, for
    hw3core.training.open_run to give them the run's values rather than today's defaults,
    except RESUME_MAY_CHANGE, which keep their defaults."""
    args = p.parse_args(argv)
    if args.resume:
        p.set_defaults(**{key: None for key in vars(args) if key not in RESUME_MAY_CHANGE})
        args = p.parse_args(argv)
    return args
