import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

import hw3core.checkpoints
from hw3core.checkpoints import (CheckpointWriter, load_checkpoint, save_checkpoint, save_epoch,
                                 unwrap_state_dict)
from hw3core.errors import UserError
from hw3core.files import write_text_atomic


def test_save_and_load_round_trip(tmp_path):
    obj = {"model": {"w": torch.arange(3.0)}, "arch": {"name": "x", "size": [1, 2]}}
    save_checkpoint(obj, tmp_path / "deep" / "c.pt")
    loaded = load_checkpoint(tmp_path / "deep" / "c.pt")
    assert torch.equal(loaded["model"]["w"], obj["model"]["w"]) and loaded["arch"] == obj["arch"]
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["c.pt"]  # no temporary left


def test_checkpoints_are_written_in_the_background_as_they_were_when_handed_over(
        tmp_path, monkeypatch):
    handed_over = threading.Event()

    def save_after_handover(obj, path):  # the write waits until write() has returned
        assert handed_over.wait(timeout=30), "write() waited for the file to be written"
        save_checkpoint(obj, path)
    monkeypatch.setattr(hw3core.checkpoints, "save_checkpoint", save_after_handover)
    weights = torch.zeros(3)
    history = [{"epoch": 1}]
    writer = CheckpointWriter()
    writer.write([(tmp_path / "best.pt", {"w": weights}),
                  (tmp_path / "last.pt", {"w": weights, "history": history}),
                  (tmp_path / "metrics.jsonl", "one line\n")])
    weights += 1  # the next steps update weights and history in place, before the write
    history.append({"epoch": 2})
    handed_over.set()
    writer.wait()
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["w"], torch.zeros(3))
    last = load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(last["w"], torch.zeros(3)) and last["history"] == [{"epoch": 1}]
    assert (tmp_path / "metrics.jsonl").read_text() == "one line\n"


def test_the_best_epochs_own_files_land_with_best_pt_before_last_pt(tmp_path, monkeypatch):
    # a kill between two writes must not leave the best epoch's confusion counts newer than
    # best.pt, nor last.pt claiming a best epoch whose files are missing
    written = []

    def record(write):
        def recorded(*args):
            write(*args)
            written.append(next(a.name for a in args if isinstance(a, Path)))
        return recorded
    monkeypatch.setattr(hw3core.checkpoints, "save_checkpoint", record(save_checkpoint))
    monkeypatch.setattr(hw3core.checkpoints, "write_text_atomic", record(write_text_atomic))
    writer = CheckpointWriter()
    for is_best in (True, False):
        save_epoch(writer, tmp_path, {"w": torch.zeros(1)}, {"optimizer": {}}, [{"epoch": 1}],
                   is_best, [(tmp_path / "best_confusion.json", "{}\n")])
        writer.wait()
    assert written == ["best.pt", "best_confusion.json", "last.pt", "metrics.jsonl",
                       "last.pt", "metrics.jsonl"]
    assert (tmp_path / "best_confusion.json").read_text() == "{}\n"


def test_a_wait_cut_short_by_a_signal_still_waits_next_time(tmp_path, monkeypatch):
    # a SIGTERM raises StopRequested wherever training is, a checkpoint's wait included
    release = threading.Event()

    def held_save(obj, path):
        release.wait(timeout=30)
        time.sleep(0.2)
        save_checkpoint(obj, path)
    monkeypatch.setattr(hw3core.checkpoints, "save_checkpoint", held_save)

    class Stop(Exception):
        pass

    def stop(signum, frame):
        raise Stop
    writer = CheckpointWriter()
    writer.write([(tmp_path / "last.pt", {"epoch": 2})])
    previous = signal.signal(signal.SIGUSR1, stop)
    try:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        with pytest.raises(Stop):
            writer.wait()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    release.set()
    writer.wait()
    assert load_checkpoint(tmp_path / "last.pt") == {"epoch": 2}


def test_a_failed_background_write_is_raised_by_the_next_write_or_wait(tmp_path):
    (tmp_path / "last.pt").mkdir()  # a folder in the way
    writer = CheckpointWriter()
    writer.write([(tmp_path / "last.pt", {"epoch": 1})])
    with pytest.raises(UserError, match="last.pt is a folder"):
        writer.wait()
    writer.wait()  # raised once
    writer.write([(tmp_path / "last.pt", {"epoch": 2})])
    with pytest.raises(UserError, match="last.pt is a folder"):
        writer.write([(tmp_path / "other.pt", {"epoch": 2})])
    assert not (tmp_path / "other.pt").exists()


def test_a_write_the_system_refuses_is_one_line_and_keeps_the_old_checkpoint(tmp_path):
    # a real refused write, as a full disk gives: a file-size limit makes the kernel fail it
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    old = path.read_bytes()
    script = (
        "import resource, signal, sys, torch\n"
        "from hw3core.checkpoints import save_checkpoint\n"
        "from hw3core.errors import UserError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    save_checkpoint({'w': torch.zeros(1_000_000)}, sys.argv[1])\n"
        "except UserError as err:\n"
        "    print(err)\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.stdout == f"cannot write {path}: File too large\n", done.stderr
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Sneaky:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("content,message", [
    (None, "checkpoint not found: "), ("folder", "is a folder: give the checkpoint file in it"),
    (b"", r"is not a checkpoint \(neither a torch file nor a pickle\): it is empty"),
    (b"hello", r"is not a checkpoint \(neither a torch file nor a pickle\)$"),
    (pickle.dumps(Sneaky()), r"not a readable checkpoint \(a load that runs no code refuses it: "
                             r"Unsupported operand \d+\)"),
    # torch's first sentence, whole, not its advice cut off at a length
    ("truncated", r"is not a readable checkpoint \(PytorchStreamReader failed [^.]*\)$")])
def test_bad_checkpoints_give_one_line_errors(tmp_path, content, message, capsys):
    path = tmp_path / "c.pt"
    if content == "folder":
        path.mkdir()
    elif content == "truncated":
        torch.save({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:2000])
    elif content is not None:
        path.write_bytes(content)
    with warnings.catch_warnings(record=True) as warned, \
            pytest.raises(UserError, match=message) as err:
        warnings.simplefilter("always")
        load_checkpoint(path)
    assert "\n" not in str(err.value) and "code ran" not in capsys.readouterr().out
    assert [str(w.message) for w in warned] == []  # torch's warnings add nothing to the line


def test_code_in_a_torch_file_never_runs(tmp_path, capsys):
    torch.save({"x": Sneaky()}, tmp_path / "c.pt")
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "c.pt")
    assert "code ran" not in capsys.readouterr().out


def test_unwrap_state_dict(tmp_path):
    sd = {"a": torch.zeros(1)}
    assert unwrap_state_dict({"model": sd, "epoch": 3}, "f") is sd
    assert unwrap_state_dict(sd, "f") is sd
    with pytest.raises(UserError, match="no state dict"):
        unwrap_state_dict({"epoch": 3}, "f")


def test_atomic_text_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.csv"
    write_text_atomic(path, "old\n")

    with pytest.raises(TypeError):
        write_text_atomic(path, 123)
    assert path.read_text() == "old\n" and len(list(tmp_path.iterdir())) == 1
