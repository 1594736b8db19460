"""What both training runs share around their own model and loss: the sharded training loader,
the warm-up and cosine schedule, the DDP wrapper, the run folder, and the run state that last.pt
keeps for --resume."""
import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from .files import write_text_atomic
from .runtime import set_rng_state


class SeededItems(torch.utils.data.Dataset):
    """``dataset`` indexed by (epoch, index): each item's random draws (its augmentations) come
    from generators seeded with (seed, epoch, index) alone.

    So an item is the same whichever process loads it, however many workers there are, whether
    they persist across epochs, and whatever ran before it: a run resumed at any point draws
    what an uninterrupted one would. The caller's own random state is left as it was.
    """

    def __init__(self, dataset, seed):
        self.dataset = dataset
        self.seed = seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        torch_seed, python_seed = np.random.SeedSequence(
            (self.seed % 2**63, epoch, index)).generate_state(2, np.uint64).tolist()
        python_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(torch_seed)
                random.seed(python_seed)
                return self.dataset[index]
        finally:
            random.setstate(python_state)


class _EpochKeys(torch.utils.data.Sampler):
    """A sampler's indices paired with the current epoch, as SeededItems takes them."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch = 0

    def __iter__(self):
        return ((self.epoch, index) for index in self.sampler)

    def __len__(self):
        return len(self.sampler)


class EpochLoader:
    """This rank's share of the training set, shuffled anew each epoch from (seed, epoch), each
    item's augmentations drawn from (seed, epoch, index) (SeededItems). Worker processes start
    once and serve every epoch."""

    def __init__(self, dataset, batch_size, workers, collate_fn, device, dist_info, seed):
        self.sampler = DistributedSampler(dataset, dist_info.world_size, dist_info.rank,
                                          shuffle=True, seed=seed)
        self.keys = _EpochKeys(self.sampler)
        # a generator of its own: starting workers then draws nothing from the global one
        self.loader = DataLoader(SeededItems(dataset, seed), batch_size, sampler=self.keys,
                                 drop_last=False, num_workers=workers, collate_fn=collate_fn,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                 generator=torch.Generator())

    def __len__(self):
        return len(self.loader)

    def epoch(self, epoch):
        self.sampler.set_epoch(epoch)
        self.keys.epoch = epoch
        return self.loader


def warmup_cosine(optimizer, warmup_steps, total_steps):
    """A scheduler stepped once per optimizer step: linear warm-up over ``warmup_steps``, then
    cosine decay to zero at ``total_steps``."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def wrap_for_ranks(model, device, dist_info):
    """``model`` itself in a single process, else wrapped in DistributedDataParallel."""
    if not dist_info.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def start_run_folder(out, args):
    """Create ``out`` and record the run's resolved options in out/args.json (rank 0 only)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "args.json", json.dumps(vars(args), indent=2) + "\n")


def run_state(optimizer, scheduler, scaler, rng_states, args, **extra):
    """What last.pt holds beside the weights so that --resume continues exactly (restore_run)."""
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_states, "args": vars(args), **extra}


def restore_run(resume, optimizer, scheduler, scaler, rank):
    """Put a last.pt's run state back in place; returns (history, epochs already done)."""
    optimizer.load_state_dict(resume["optimizer"])
    scheduler.load_state_dict(resume["scheduler"])
    scaler.load_state_dict(resume["scaler"])
    set_rng_state(resume["rng"][rank])
    return resume["history"], resume["epoch"]
