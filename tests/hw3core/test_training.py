"""The training plumbing both problems share: what makes a resumed run draw the same batches."""
import argparse
import random

import torch

from hw3core.checkpoints import load_checkpoint, save_checkpoint
from hw3core.runtime import Distributed, rng_state
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


def test_an_epoch_draws_the_same_batches_whatever_came_before():
    # one worker process: its random numbers come from the loader's reseeded generator
    cpu = torch.device("cpu")
    straight = EpochLoader(NoisyItems(), 4, 1, None, cpu, Distributed(), seed=3)
    resumed = EpochLoader(NoisyItems(), 4, 1, None, cpu, Distributed(), seed=3)
    first, second = batches(straight.epoch(0)), batches(straight.epoch(1))
    assert batches(resumed.epoch(1)) == second  # epoch 0 never ran here
    assert first != second and sorted(sum((b[0] for b in first), [])) == list(range(12))


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
    state = {**run_state(optimizer, scheduler, scaler, [rng_state()], argparse.Namespace(lr=0.1),
                         best_acc=0.5), "history": [{"epoch": 1}], "epoch": 1}
    expected = torch.rand(3)  # drawn right after the state was taken
    save_checkpoint(state, tmp_path / "last.pt")
    saved = load_checkpoint(tmp_path / "last.pt")  # as --resume reads it: weights only
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    fresh_scheduler = torch.optim.lr_scheduler.StepLR(fresh, 1)
    history, done = restore_run(saved, fresh, fresh_scheduler, scaler, rank=0)
    assert (history, done) == ([{"epoch": 1}], 1)
    assert saved["best_acc"] == 0.5 and saved["args"] == {"lr": 0.1}
    assert fresh_scheduler.last_epoch == 1 and fresh.state_dict()["state"][0]["step"] == 1
    assert torch.equal(torch.rand(3), expected)  # the random state is the saved one again
