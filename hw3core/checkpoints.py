"""Checkpoint I/O: atomic saves, safe loads (weights_only=True), clear errors for wrong files."""
import json
import re
import sys
import threading
import warnings
from pathlib import Path

import torch

from .errors import UserError
from .files import atomic_path, write_text_atomic


def save_checkpoint(obj, path):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as err:
            # torch's zip writer reports a failed write (a full disk) as a RuntimeError about
            # file positions; given a file object, the OSError it met is the context, which
            # atomic_path turns into one line naming the checkpoint
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise


def load_checkpoint(path, mmap=False):
    """Load a checkpoint on the CPU without running any code stored in it; with ``mmap`` its
    tensors are mapped from the file, read only where used.

    Raises UserError naming the file when it is missing, not a torch file, or holds objects that a
    weights-only load refuses.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder: give the checkpoint file in it")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            start = f.read(4)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    if start[:2] != b"PK" and start[:1] != b"\x80":  # torch.save's zip archive, a legacy pickle
        raise UserError(f"{path} is not a checkpoint (neither a torch file nor a pickle)"
                        + (": it is empty" if not start else ""))
    try:
        with warnings.catch_warnings():  # e.g. about a pickle protocol, before a refusal
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for foreign or damaged files
        lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines()
                 if line.strip()]
        # a weights-only refusal's first line says only that it failed (and that a load that
        # may run the file's code would not); after "WeightsUnpickler error:", or a line below, why
        marker = "WeightsUnpickler error:"
        at = next((i for i, line in enumerate(lines) if marker in line), None)
        if at is None:
            reason = lines[0] if lines else type(err).__name__
        else:
            reason = ("a load that runs no code refuses it: "
                      + (lines[at].split(marker, 1)[1].strip() or (lines[at + 1:] or [""])[0]))
        # torch's messages run on with advice about its own internals: their first sentence
        reason = reason.split(". ", 1)[0].rstrip(".")
        if len(reason) > 200:
            reason = reason[:200].rsplit(" ", 1)[0] + " ..."
        raise UserError(f"{path} is not a readable checkpoint ({reason})") from None


# What each problem's checkpoints hold; the number after the slash changes when what they hold
# does, so that an older copy of this code refuses a newer file instead of misreading it.
FORMATS = {"hw3-p1-vit": ("1", "a Problem 1 ViT checkpoint"),
           "hw3-p2-catr": ("1", "a Problem 2 captioner checkpoint")}


def check_format(obj, expected, path):
    """Refuse a checkpoint of this project written in another format than ``expected`` (a
    FORMATS key). Files without a ``format`` key pass: released CATR checkpoints, ppvit and timm
    state dicts, and this project's checkpoints from before the key was checked."""
    found = obj.get("format") if isinstance(obj, dict) else None
    if found is None:
        return
    kind, _, version = str(found).partition("/")
    if kind not in FORMATS:
        raise UserError(f"{path} has an unknown checkpoint format {found!r}")
    if kind != expected:
        raise UserError(f"{path} is {FORMATS[kind][1]}, not {FORMATS[expected][1]}")
    if version != FORMATS[kind][0]:
        raise UserError(f"{path} is in format {found}, which this version of the project cannot "
                        f"read (it reads {kind}/{FORMATS[kind][0]}): update the project")


def format_tag(kind):
    """The ``format`` value this version writes for ``kind`` (a FORMATS key)."""
    return f"{kind}/{FORMATS[kind][0]}"


class CheckpointWriter:
    """Writes files in a thread of its own, one batch of them at a time, so that training goes
    on while a checkpoint reaches the disk: a ViT-B/16 last.pt holds 657 MiB, and with best.pt
    took 1.2 to 2.6 s to write on the tests' 2-core CPU, where an epoch of the course's 3,680
    images is under 5 s of model time on an H200. What is written is a CPU copy taken when the
    files are handed over, so that the next steps' in-place updates of weights and optimizer
    state never reach it. A write that
    fails is raised by the next write() or by wait()."""

    def __init__(self):
        self._thread = None
        self._done = threading.Event()
        self._error = None

    def write(self, files):
        """Write ``files``, [(path, a checkpoint or a str)], in that order, in the background,
        once the previous batch is written."""
        self.wait()
        copies = {}  # a tensor in two files (the weights of best.pt and last.pt) is copied once
        files = [(path, _cpu_copy(obj, copies)) for path, obj in files]
        self._done.clear()
        self._thread = threading.Thread(target=self._write, args=(files,),
                                        name="checkpoint writer")
        self._thread.start()  # not a daemon: a run that fails still finishes its last write

    def _write(self, files):
        try:
            for path, obj in files:
                if isinstance(obj, str):
                    write_text_atomic(path, obj)
                else:
                    save_checkpoint(obj, path)
        except BaseException as err:  # for the training thread to raise
            self._error = err
        finally:
            self._done.set()

    def wait(self):
        """Return once everything handed over is written; raise what a write raised."""
        if self._thread is not None:
            # first the event: a signal's exception inside Thread.join can leave the thread
            # marked finished while it still writes (CPython 3.11, bpo-46726)
            self._done.wait()
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _cpu_copy(obj, copies):
    """``obj`` with every tensor in it copied to the CPU, and its dicts (of their own type),
    lists and tuples new."""
    if isinstance(obj, torch.Tensor):
        if id(obj) not in copies:
            copies[id(obj)] = obj.detach().to("cpu", copy=True)
        return copies[id(obj)]
    if isinstance(obj, dict):
        copied = type(obj)((key, _cpu_copy(value, copies)) for key, value in obj.items())
        if hasattr(obj, "_metadata"):  # a state dict's module versions, which loading reads
            copied._metadata = obj._metadata
        return copied
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(value, copies) for value in obj)
    return obj


def save_epoch(writer, out, weights, run_state, history, is_best, best_files=()):
    """What a training run writes after each epoch, in folder ``out``, handed to ``writer``
    (CheckpointWriter), in this order.

    best.pt: ``weights`` (what inference needs), when this epoch is the best so far, followed by
    ``best_files`` ([(path, text)], what else the best epoch keeps); last.pt: ``weights`` plus
    ``run_state`` (optimizer, scheduler, RNG states...) and ``history``, all that --resume
    restores; metrics.jsonl: one line per epoch of ``history``.
    """
    out = Path(out)
    writer.write([*([(out / "best.pt", weights), *best_files] if is_best else []),
                  (out / "last.pt", {**weights, **run_state, "history": history}),
                  (out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))])


def unwrap_state_dict(obj, path):
    """Return the tensor mapping inside a checkpoint: itself, or under 'model' / 'state_dict'."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise UserError(f"{path} holds no state dict of tensors")


if __name__ == "__main__":
    # `python -m hw3core.checkpoints FILE...`: a line per FILE, "ok" if it loads safely, else
    # "bad: why" (hw3_download.sh checks all its files with one Python start)
    if len(sys.argv) < 2:
        sys.exit("usage: python -m hw3core.checkpoints FILE...")
    for name in sys.argv[1:]:
        try:
            load_checkpoint(name)
            print("ok", flush=True)
        except UserError as err:
            print(f"bad: error: {err}", flush=True)
