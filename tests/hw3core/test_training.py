"""The training plumbing both problems share: what makes a resumed run draw the same batches."""
import argparse
import contextlib
import math
import random

import pytest
import torch

from hw3core.checkpoints import load_checkpoint, save_checkpoint
from hw3core.runtime import Distributed
from hw3core.training import EpochLoader, restore_run, run_state


class NoisyItems(torch.utils.data.Dataset):
    """Item i and random numbers drawn in the loader, as augmentations draw them (torchvision's
    from torch, CATR's rotation from Python's random)."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        return index, torch.rand(()) + random.random()


def batches(loader):
    return [(indices.tolist(), noise.tolist()) for indices, noise in loader]


class EpochsOfTwoBatches:
    """A loader for train_epochs whose epochs the test's own train_epoch makes up."""

    def epoch(self, epoch, skip):
        return []

    def close(self):
        pass

    def __len__(self):
        return 2


def run_epochs(out, epochs, train_epoch, validate=None, dist_info=Distributed(), resume=None):
    """train_epochs over a two-weight model, its epochs ``train_epoch``'s, into ``out``."""
    from hw3core.training import train_epochs

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return train_epochs(
        argparse.Namespace(out=str(out), epochs=epochs, seed=0), dist_info, torch.device("cpu"),
        EpochsOfTwoBatches(), optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        torch.amp.GradScaler("cpu", enabled=False), resume, train_epoch=train_epoch,
        validate=validate, best=("val_acc", "{}"),
        weights=lambda done, record: {"model": model.state_dict(), "epoch": done},
        report_epoch=lambda record, improved: None,
        curves=[("loss", "loss", [("train_loss", "train")])])


def test_an_epoch_draws_the_same_batches_whatever_came_before():
    # one worker process: its random numbers come from the loader's reseeded generator
    cpu = torch.device("cpu")
    straight = EpochLoader(NoisyItems(), 4, 1, None, cpu, Distributed(), seed=3)
    resumed = EpochLoader(NoisyItems(), 4, 1, None, cpu, Distributed(), seed=3)
    first, second = batches(straight.epoch(0)), batches(straight.epoch(1))
    assert batches(resumed.epoch(1)) == second  # epoch 0 never ran here
    assert first != second and sorted(sum((b[0] for b in first), [])) == list(range(12))


def test_the_seed_sets_the_order_of_the_items():
    cpu = torch.device("cpu")

    def order(seed):
        loader = EpochLoader(NoisyItems(), 4, 0, None, cpu, Distributed(), seed=seed)
        return [indices for indices, _ in batches(loader.epoch(0))]
    assert order(3) == order(3) and order(3) != order(4)


def test_items_do_not_depend_on_workers_or_the_callers_random_state():
    cpu = torch.device("cpu")
    runs = {}
    for workers in (0, 2):
        loader = EpochLoader(NoisyItems(), 4, workers, None, cpu, Distributed(), seed=3)
        torch.manual_seed(workers)  # the caller's own draws differ between the runs
        random.seed(workers)
        expected_torch, expected_python = torch.rand(()), random.random()
        torch.manual_seed(workers)
        random.seed(workers)
        runs[workers] = [batches(loader.epoch(epoch)) for epoch in (0, 1, 2)]
        # loading drew nothing from the caller's generators
        assert torch.rand(()) == expected_torch and random.random() == expected_python
    assert runs[0] == runs[2]  # and the persistent workers drew anew each epoch
    assert runs[0][0] != runs[0][1] != runs[0][2]


def test_batches_made_on_the_gpu_come_from_a_stream_the_training_waits_for(monkeypatch):
    # no GPU here: stand-ins for the streams record what happens where, and in which order
    log, current = [], ["main"]

    class Stream:
        def __init__(self, name, device, priority=0):
            self.name, self.device, self.priority = name, device, priority

        def wait_stream(self, other):
            log.append(f"{self.name} waits for {other.name}")

    class CudaTensor:
        is_cuda = True

        def __init__(self, indices):
            self.indices = indices

        def record_stream(self, stream):
            log.append(f"batch {self.indices} kept for {stream.name}")

    @contextlib.contextmanager
    def on(stream):
        current.append(stream.name)
        yield
        current.pop()

    def collate(items):
        indices = [index for index, _ in items]
        log.append(f"batch {indices} made on {current[-1]}")
        return CudaTensor(indices), torch.tensor(indices)  # images on the GPU, labels not

    gpu = torch.device("cuda", 1)
    main = Stream("main", gpu)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: {gpu: main}[device])
    monkeypatch.setattr(torch.cuda, "Stream",
                        lambda device, priority=0: Stream("side", device, priority))
    monkeypatch.setattr(torch.cuda, "stream", on)
    loader = EpochLoader(NoisyItems(), 6, 0, collate, gpu, Distributed(), seed=0, pin_memory=False,
                         items_on_device=True)
    loader.sampler.shuffle = False
    batches = loader.epoch(0)
    assert batches.side.priority < 0  # ahead of the step's kernels, some of which wait on it
    assert len(batches) == 2
    for images, _ in batches:
        log.append(f"batch {images.indices} used on {current[-1]}")
    assert log == ["side waits for main",  # for the images put on the GPU before
                   "batch [0, 1, 2, 3, 4, 5] made on side", "main waits for side",
                   "batch [0, 1, 2, 3, 4, 5] kept for main",
                   "batch [0, 1, 2, 3, 4, 5] used on main",
                   "batch [6, 7, 8, 9, 10, 11] made on side", "main waits for side",
                   "batch [6, 7, 8, 9, 10, 11] kept for main",
                   "batch [6, 7, 8, 9, 10, 11] used on main"]
    # items made on the CPU, or elsewhere than in this process, come as the loader makes them
    cpu = EpochLoader(NoisyItems(), 6, 0, collate, torch.device("cpu"), Distributed(), seed=0,
                      items_on_device=True)
    assert cpu.epoch(0) is cpu.loader
    elsewhere = EpochLoader(NoisyItems(), 6, 0, collate, gpu, Distributed(), seed=0,
                            pin_memory=False)
    assert elsewhere.epoch(0) is elsewhere.loader


def test_ranks_share_out_the_items():
    cpu = torch.device("cpu")
    shares = [sum((b[0] for b in batches(EpochLoader(NoisyItems(), 4, 0, None, cpu,
                                                     Distributed(rank, 2), seed=0).epoch(5))), [])
              for rank in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(12)) and len(shares[0]) == 6


def test_restore_run_puts_back_what_run_state_saved(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    scheduler.step()
    in_epoch = {"epoch": 1, "batches": 3, "ranks": [{"batches": 3, "loss_sum": 1.5}]}
    state = {**run_state(optimizer, scheduler, scaler, argparse.Namespace(lr=0.1), in_epoch),
             "history": [{"epoch": 1}], "epoch": 1}
    save_checkpoint(state, tmp_path / "last.pt")
    saved = load_checkpoint(tmp_path / "last.pt")  # as --resume reads it: weights only
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    fresh_scheduler = torch.optim.lr_scheduler.StepLR(fresh, 1)
    assert restore_run(saved, fresh, fresh_scheduler, scaler) == ([{"epoch": 1}], 1, in_epoch)
    assert saved["args"] == {"lr": 0.1}
    assert fresh_scheduler.last_epoch == 1 and fresh.state_dict()["state"][0]["step"] == 1


def test_a_steps_random_draws_depend_on_seed_rank_epoch_and_step_alone():
    from hw3core.training import seed_step

    draws = {}
    for key in [(0, 0, 0, 5), (0, 0, 1, 5), (0, 1, 0, 5), (1, 0, 0, 5), (0, 0, 0, 6)]:
        torch.rand(7)  # whatever ran before
        seed_step(*key)
        draws[key] = (torch.rand(3).tolist(), random.random())
    seed_step(0, 0, 0, 5)
    assert (torch.rand(3).tolist(), random.random()) == draws[(0, 0, 0, 5)]
    assert len({str(d) for d in draws.values()}) == len(draws)


def test_skipped_batches_leave_the_rest_of_the_epoch_as_it_was():
    cpu = torch.device("cpu")
    loader = EpochLoader(NoisyItems(), 4, 0, None, cpu, Distributed(), seed=3)
    whole = batches(loader.epoch(2))
    assert batches(loader.epoch(2, skip_batches=2)) == whole[2:]
    assert len(loader) == 3 and len(loader.epoch(2, skip_batches=1)) == 2
    # a resume after a signal during validation skips a whole epoch, its last batch short
    short = EpochLoader(NoisyItems(), 5, 0, None, cpu, Distributed(), seed=3)
    whole = batches(short.epoch(2))
    assert batches(short.epoch(2, skip_batches=2)) == whole[2:] and len(whole[2][0]) == 2
    assert len(short) == 3 and len(short.epoch(2, skip_batches=3)) == 0
    assert batches(short.epoch(2, skip_batches=3)) == []


def test_warmup_rises_linearly_to_the_peak_then_follows_the_cosine_to_zero():
    from hw3core.training import warmup_cosine

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = warmup_cosine(optimizer, warmup_steps=4, total_steps=12)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    rates.append(optimizer.param_groups[0]["lr"])
    assert rates[:4] == pytest.approx([0.125, 0.25, 0.375, 0.5])
    expected = [0.25 * (1 + math.cos(math.pi * step / 8)) for step in range(9)]
    assert rates[4:] == pytest.approx(expected)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


def test_a_signal_abandons_the_step_even_in_its_backward_pass_but_not_the_commit():
    import os
    import signal

    from hw3core.training import Interruptible, StopRequested, signals_during_backward

    blocks = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(3)])
    signals_during_backward(blocks)
    # the signal arrives while the last block's gradients are computed, inside backward()
    blocks[2].register_full_backward_hook(lambda *args: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    with Interruptible() as stop:
        with pytest.raises(StopRequested):
            blocks(torch.ones(1, 4)).sum().backward()
        assert stop.signum == signal.SIGTERM
        assert blocks[0].weight.grad is None  # the backward pass went no further
    assert signal.getsignal(signal.SIGTERM) is before

    committed = []
    with Interruptible() as stop:
        with pytest.raises(StopRequested):
            with stop.committing():
                os.kill(os.getpid(), signal.SIGINT)
                committed.append("rest of the commit")
        os.kill(os.getpid(), signal.SIGINT)  # a second signal while last.pt is written
        committed.append("the checkpoint")
    assert committed == ["rest of the commit", "the checkpoint"] and stop.signum == signal.SIGINT


def test_a_second_signal_during_the_stops_checkpoint_write_leaves_it_to_finish(tmp_path,
                                                                               monkeypatch):
    import os
    import signal
    import threading
    import time

    import hw3core.checkpoints
    from hw3core.errors import Interrupted

    def slow_save(obj, path, save=hw3core.checkpoints.save_checkpoint):
        time.sleep(0.3)  # a big last.pt
        save(obj, path)
    monkeypatch.setattr(hw3core.checkpoints, "save_checkpoint", slow_save)

    def train_epoch(e):
        e.sums.add(torch.tensor(1.0), 1, 1)
        e.sums.commit(1)
        if e.index == 1:  # once epoch 1 is written: the stop, and a second signal while the
            time.sleep(0.5)  # stop's last.pt is being written
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
            os.kill(os.getpid(), signal.SIGTERM)

    reached_the_default = []
    previous = signal.signal(signal.SIGTERM, lambda *_: reached_the_default.append(True))
    try:
        with pytest.raises(Interrupted, match="holds epoch 2 up to batch 1 of 2"):
            run_epochs(tmp_path, 3, train_epoch)
        time.sleep(0.2)  # past the second signal, had it come late
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not reached_the_default  # the handler the run replaced got no signal
    assert load_checkpoint(tmp_path / "last.pt")["in_epoch"]["batches"] == 1


def test_a_new_run_removes_what_a_killed_checkpoint_write_left(tmp_path):
    from hw3core.files import atomic_path
    from hw3core.training import start_run_folder

    (tmp_path / "last.pt").write_bytes(b"the previous, intact last.pt")
    (tmp_path / ".notes.tmp").write_text("the user's own")
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "last.pt") as tmp:
        raise KeyboardInterrupt  # atomic_path removes its temporary; a kill -9 would not, so:
    tmp.write_bytes(b"half a checkpoint")
    start_run_folder(tmp_path, argparse.Namespace(lr=0.1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "args.json", "last.pt"]


def test_under_torchrun_a_process_stops_on_the_agreed_flag_alone(monkeypatch):
    import signal

    from hw3core.training import Interruptible, StopRequested

    cpu = torch.device("cpu")
    stop = Interruptible(distributed=True)

    def reduced_then_signalled(flag, op):  # every process sent 0; then this one's signal lands
        stop.signum = signal.SIGTERM
    monkeypatch.setattr(torch.distributed, "all_reduce", reduced_then_signalled)
    stop.check(cpu)  # no stop here: the others go on to the next step
    sent = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda flag, op: sent.append(int(flag)))
    stop.check(cpu)  # this step's flag carries it to every process; they read it a step later
    assert sent == [signal.SIGTERM]
    with pytest.raises(StopRequested):
        stop.check(cpu)
    assert sent == [signal.SIGTERM]  # a stop sends no flag the others would wait for

    # a signal that reached another process alone stops this one too, at the same point; at an
    # epoch's end (before validation) the flags sent at its last step are read, and none sent
    elsewhere = Interruptible(distributed=True)
    elsewhere.check_sent()  # none sent yet
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda flag, op: flag.fill_(15))
    elsewhere.check(cpu)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda flag, op: sent.append(int(flag)))
    with pytest.raises(StopRequested):
        elsewhere.check_sent()
    assert elsewhere.signum == 15 and sent == [signal.SIGTERM]


def test_under_torchrun_a_signal_in_an_epochs_last_step_stops_before_validation(tmp_path,
                                                                                monkeypatch):
    import os
    import signal

    from hw3core.errors import Interrupted

    # this process's flags reach the others unchanged, as if they sent none: MAX of theirs (0)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda flag, op: None)
    validated = []

    def train_epoch(e):
        for step in range(2):
            e.sums.add(torch.tensor(1.0), 1, 1)
            e.sums.commit(step + 1)
            if step == 1:  # after the flag of step 0 was sent: step 1's carries it
                os.kill(os.getpid(), signal.SIGTERM)
            e.stop.check(torch.device("cpu"))

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="holds all 2 training batches of epoch 1"):
        run_epochs(tmp_path, 1, train_epoch, validate=lambda: validated.append(1) or {},
                   dist_info=Distributed(rank=0, world_size=2))
    assert signal.getsignal(signal.SIGTERM) is previous
    assert not validated  # the stop came before validation, not after it (or never, last epoch)
    assert load_checkpoint(tmp_path / "last.pt")["in_epoch"]["batches"] == 2


@pytest.mark.parametrize("unreadable", ["training", "validation"])
def test_an_epoch_that_read_no_image_is_one_error_and_writes_no_checkpoint(unreadable, tmp_path):
    from hw3core.errors import UserError

    def train_epoch(e):  # headers that opened, bodies that did not: every batch skipped
        e.sums.add(torch.tensor(1.0), 1, int(unreadable == "validation"))
        e.sums.commit(1)

    with pytest.raises(UserError, match=f"none of the {unreadable} images could be read"):
        run_epochs(tmp_path, 2, train_epoch,
                   validate=lambda: {"val_images": 0, "val_acc": 0.0})
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()


def test_a_resumed_run_replaces_best_pt_only_with_a_better_epoch_than_all_before(tmp_path):
    accuracies = iter([0.9, 0.5, 0.7, 0.95])

    def train_epoch(e):
        e.sums.add(torch.tensor(1.0), 1, 1)
        e.sums.commit(1)

    def validate():
        return {"val_acc": next(accuracies), "val_images": 1}

    run_epochs(tmp_path, 2, train_epoch, validate)
    for epochs, best in ((3, 1), (4, 4)):  # the best epoch came before the resumed ones
        run_epochs(tmp_path, epochs, train_epoch, validate,
                   resume=load_checkpoint(tmp_path / "last.pt"))
        assert load_checkpoint(tmp_path / "best.pt")["epoch"] == best
