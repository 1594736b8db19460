"""The run skeleton both training runs share around their own model and loss: the sharded
training and validation loaders, per-step seeding, stopping on SIGTERM/SIGINT, the warm-up and
cosine schedule, the DDP wrapper, the run folder, --resume, and the epoch loop with its records
and checkpoints (train_epochs)."""
import contextlib
import functools
import json
import math
import random
import shutil
import signal
import threading
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from .checkpoints import CheckpointWriter, check_format, load_checkpoint, save_epoch
from .cli import RESUME_MAY_CHANGE, STARTING_WEIGHTS
from .errors import Interrupted, UserError
from .figures import plot_history
from .files import remove_stale_temporaries, require_writable_folder, write_text_atomic
from .runtime import (describe_device, is_main_process, pick_device, print0, share_cores,
                      sum_over_ranks)


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
        python_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                # the CPU's generator alone: augmentations draw there wherever the image is, and
                # a GPU's generator belongs to the training step (seed_step)
                seed_generators(self.seed, epoch, index, devices="cpu")
                return self.dataset[index]
        finally:
            random.setstate(python_state)


class _EpochKeys(torch.utils.data.Sampler):
    """A sampler's indices paired with the current epoch, as SeededItems takes them, after the
    first ``skip`` indices (those of batches a resumed epoch has already trained on)."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch = 0
        self.skip = 0

    def __iter__(self):
        indices = iter(self.sampler)
        for _ in zip(range(self.skip), indices):
            pass
        return ((self.epoch, index) for index in indices)

    def __len__(self):
        return len(self.sampler) - self.skip


class SideStreamBatches:
    """The batches of ``loader``, whose items are made on the GPU in this process (DecodedImages
    there), each batch made on the CUDA stream ``side`` (its GPU's); the batches are sequences
    of tensors, or None.

    A copy from host memory that blocks waits for all the work queued on its stream, and
    torchvision's affine, rotate and sharpness make their parameters' tensors so, at every image.
    On the training's stream the next batch's augmentation would wait there for the step in
    flight, and the CPU's time of augmenting would add to the step's instead of overlapping it.
    On a stream of its own a copy waits for the augmentation's kernels only, and the training's
    stream waits for the batch on the GPU, not the host.
    """

    def __init__(self, loader, side):
        self.loader, self.side = loader, side

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        current, side = torch.cuda.current_stream(self.side.device), self.side
        side.wait_stream(current)  # the images went to the GPU on the current stream
        batches = iter(self.loader)
        end = object()
        while True:
            with torch.cuda.stream(side):
                batch = next(batches, end)
            if batch is end:
                return
            current.wait_stream(side)
            for tensor in batch or ():
                if tensor.is_cuda:
                    # freed on the side stream, its memory must wait for the current one's use
                    tensor.record_stream(current)
            yield batch


class EpochLoader:
    """This rank's share of the training set, shuffled anew each epoch from (seed, epoch), each
    item's augmentations drawn from (seed, epoch, index) (SeededItems). Worker processes start
    once and serve every epoch. ``items_on_device``: the dataset makes its items on ``device``
    in this process (no workers); on a GPU, each batch is then made on a stream of its own
    (SideStreamBatches)."""

    def __init__(self, dataset, batch_size, workers, collate_fn, device, dist_info, seed,
                 pin_memory=None, items_on_device=False):
        self.dataset, self.batch_size = dataset, batch_size
        self.sampler = DistributedSampler(dataset, dist_info.world_size, dist_info.rank,
                                          shuffle=True, seed=seed)
        self.keys = _EpochKeys(self.sampler)
        # a generator of its own: starting workers then draws nothing from the global one
        self.loader = DataLoader(SeededItems(dataset, seed), batch_size, sampler=self.keys,
                                 drop_last=False, num_workers=workers, collate_fn=collate_fn,
                                 pin_memory=device.type == "cuda" if pin_memory is None
                                 else pin_memory, persistent_workers=workers > 0,
                                 generator=torch.Generator())
        # one stream for the run: streams come from a pool of 32 in turn, which NCCL draws from
        # too. High priority: its small augmentation kernels, some of which the host waits for
        # (a rotation's parameters copied in), go ahead of the step's queued ones
        self.batches = (SideStreamBatches(self.loader, torch.cuda.Stream(device, priority=-1))
                        if items_on_device and device.type == "cuda" else self.loader)

    def __len__(self):
        """Batches in a whole epoch."""
        return math.ceil(len(self.sampler) / self.batch_size)

    def close(self):
        """Stop the worker processes now. Left to the garbage collector, which may take them
        down after the queues they wait on, each waits out a 5 s join timeout."""
        iterator = self.loader._iterator  # where a DataLoader keeps its persistent workers
        if iterator is not None:
            iterator._shutdown_workers()
            self.loader._iterator = None

    def epoch(self, epoch, skip_batches=0):
        """The loader over ``epoch``'s batches, from batch ``skip_batches`` on."""
        self.sampler.set_epoch(epoch)
        self.keys.epoch = epoch
        # all of them after a signal during validation: the last batch may be short
        self.keys.skip = min(skip_batches * self.batch_size, len(self.sampler))
        return self.batches


def seed_generators(seed, *key, devices="all"):
    """Seed torch's generators (those of every device, or with ``devices="cpu"`` the CPU's) and
    Python's from (seed, *key) alone."""
    torch_seed, python_seed = np.random.SeedSequence(
        (seed % 2**63, *key)).generate_state(2, np.uint64).tolist()
    if devices == "cpu":
        torch.default_generator.manual_seed(torch_seed)
    else:
        torch.manual_seed(torch_seed)
    random.seed(python_seed)


def seed_step(seed, rank, epoch, step):
    """Seed the generators a training step draws from (dropout, stochastic depth, MixUp and
    CutMix) from (seed, rank, epoch, step) alone: a run resumed at any step draws what an
    uninterrupted one would, with no generator state to save or gather from the ranks."""
    seed_generators(seed, rank, epoch, step)


class StopRequested(Exception):
    """Raised in the training step when SIGTERM or SIGINT arrives (see Interruptible)."""


class Interruptible:
    """Within the block, SIGTERM and SIGINT (a cluster's pre-emption, a closed terminal, Ctrl-C)
    stop training, keeping all that the last completed optimizer step made.

    In one process the signal raises StopRequested inside the step in progress, which is
    abandoned: on a CPU a ViT-B step takes about a minute, and torchrun kills its processes 30 s
    after SIGTERM. Only the optimizer step and the bookkeeping after it (``committing``) finish
    first, so that the model, the optimizer and the sums are those of one completed step.

    Under torchrun a process cannot leave a step on its own: the others would wait for it in
    the step's gradient all-reduce. There the signal is noted, and at each step's end (``check``)
    the processes send an all-reduce of a flag on its way and read the one sent a step before,
    and once more at the epoch's end (``check_sent``): all read the same flags at the same
    points, so they stop together, a step after the signal was sent. Read at once, the flag
    would make every step wait for the GPU to finish it.
    ``signum`` is the first signal received (by any process, once agreed).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, distributed=False):
        self.signum = None
        self._distributed = distributed
        self._committing = False
        self._raised = False
        self._previous = {}
        # the flag sent at the last check, its reduction's copy on the host, when that landed
        self._flag = self._reduced = self._copied = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
        if not (self._distributed or self._committing):
            self._stop()

    def _stop(self):
        if not self._raised:  # once: later signals leave the checkpoint write alone
            self._raised = True
            raise StopRequested

    def note_only(self):
        """From now on a signal is noted, not raised: what follows must finish."""
        self._raised = True

    @contextlib.contextmanager
    def committing(self):
        """A block that a signal does not cut short; in one process the stop comes right
        after it."""
        self._committing = True
        try:
            yield
        finally:
            self._committing = False
        if self.signum is not None and not self._distributed:
            self._stop()

    def check(self, device):
        """At the end of a step: raise StopRequested if a stop was asked for (under torchrun,
        in any process, by the time of the check before; every process calls this at the same
        steps)."""
        if self._distributed:
            # the decision is the reduced flag's alone: a signal that lands after a flag is sent
            # waits for the next, or this process would stop a step before the others
            self._stop_if_agreed(self._read_sent())
            self._send(device)
        elif self.signum is not None:
            self._stop()

    def check_sent(self):
        """At the end of an epoch's steps (every process, at the same point): under torchrun,
        raise StopRequested if the flags sent at the last check carry a stop. Else a signal in
        an epoch's last step would wait through validation, and in the last epoch be lost."""
        if self._distributed:
            self._stop_if_agreed(self._read_sent())

    def _stop_if_agreed(self, agreed):
        if agreed:
            self.signum = self.signum or agreed
            self._stop()

    def _read_sent(self):
        """The largest signal number in the flags the processes sent at the last check; 0 if
        none was noted, or none was sent."""
        if self._copied is not None:
            self._copied.synchronize()  # the GPU's work up to the last check, not this one's
        return 0 if self._reduced is None else int(self._reduced[0])

    def _send(self, device):
        if self._flag is None:
            cuda = device.type == "cuda"
            self._flag = torch.zeros(1, dtype=torch.int64, device=device)
            self._reduced = torch.zeros(1, dtype=torch.int64, pin_memory=cuda)
            self._copied = torch.cuda.Event() if cuda else None  # on a CPU, done on return
        self._flag.fill_(self.signum or 0)
        torch.distributed.all_reduce(self._flag, torch.distributed.ReduceOp.MAX)
        self._reduced.copy_(self._flag, non_blocking=True)
        if self._copied is not None:
            self._copied.record()


class Epochs:
    """The epochs a run has still to do, from where its last.pt left off (``in_epoch``: the
    progress of an epoch a signal cut short), each stoppable by SIGTERM or SIGINT:

        with Epochs(...) as epochs:
            for e in epochs:
                train_one_epoch(..., e.loader, e.sums, e.stop, e.step_seed)
                ... validation ...
                with e.committing():   # the epoch's record and checkpoint, written whole
                    ...

    A stop inside a run becomes Interrupted, naming what last.pt holds: the epoch once its
    record is written, else ``save_last(epoch, in_epoch)`` (rank 0) writes last.pt with every
    rank's sums at its last completed step. However the epochs end, ``finish()`` (waiting for
    the checkpoint writes) runs before the signal handlers go, and signals then only wait.
    """

    def __init__(self, epochs, start, in_epoch, loader, device, dist_info, seed, out, save_last,
                 finish):
        self.epochs, self.start, self.in_epoch = epochs, start, in_epoch
        self.loader, self.device, self.dist_info, self.seed = loader, device, dist_info, seed
        self.out, self.save_last, self.finish = Path(out), save_last, finish
        self.stop = Interruptible(dist_info.enabled)
        self.current = None

    def __enter__(self):
        self.stop.__enter__()
        return self

    def __iter__(self):
        rank = self.dist_info.rank
        for epoch in range(self.start, self.epochs):
            resumed = self.in_epoch is not None and self.in_epoch["epoch"] == epoch
            sums = EpochSums(self.device, self.in_epoch["ranks"][rank] if resumed else None)
            self.current = types.SimpleNamespace(
                index=epoch, sums=sums, stop=self.stop, saved=False,
                loader=self.loader.epoch(epoch, sums.batches),
                step_seed=functools.partial(seed_step, self.seed, rank, epoch),
                committing=self._committing)
            yield self.current

    @contextlib.contextmanager
    def _committing(self):
        with self.stop.committing():
            yield
            self.current.saved = True

    def __exit__(self, kind, error, traceback):
        try:
            if kind is not None and issubclass(kind, StopRequested):
                raise self._interrupted() from None
        finally:
            self.stop.note_only()  # a second signal must not cut the last write short
            try:
                self.finish()
            finally:
                self.stop.__exit__(kind, error, traceback)
                self.loader.close()

    def _interrupted(self):
        epoch = self.current
        if epoch.saved:
            where = f"epoch {epoch.index + 1}"
        else:
            ranks = epoch.sums.progress_of_all_ranks()
            done, total = ranks[0]["batches"], len(self.loader)
            if self.dist_info.is_main:
                self.save_last(epoch.index, {"epoch": epoch.index, "batches": done,
                                             "ranks": ranks})
            where = (f"all {done} training batches of epoch {epoch.index + 1}" if done >= total
                     else f"epoch {epoch.index + 1} up to batch {done} of {total}")
        last = self.out / "last.pt"
        return Interrupted(self.stop.signum, f"stopped by {signal.Signals(self.stop.signum).name}"
                           f": {last} holds {where}; rerun the same command with --resume "
                           f"{last} to go on")


def join_the_gradient_all_reduce(model, forward):
    """A step for a process whose batch held no readable image, under torchrun: the others'
    backward pass waits for this one's gradients, and skipping it would hang them. A pass that
    weighs the output by 0 gives every parameter a zero gradient, so this process joins the
    all-reduce (and then the optimizer step) in lockstep; the step's averaged gradient then counts
    its share as zero. ``forward()`` runs the model on a placeholder input, in eval mode: no
    dropout draw, no batch-norm statistics from it."""
    was_training = model.training
    model.eval()
    try:
        (forward().float().sum() * 0.0).backward()
    finally:
        model.train(was_training)


def signals_during_backward(modules):
    """Let a signal (Interruptible) stop a step between the backward passes of ``modules``.

    Python runs signal handlers between its own instructions only, and a CPU backward pass is
    one call into C++ that may take most of a minute; a no-op hook per module gives the handler
    its chance. (On a GPU the backward runs in another thread, and takes moments.)
    """
    for module in modules:
        module.register_full_backward_pre_hook(lambda module, grad_output: None)


class BatchNormStatistics:
    """The running statistics of ``model``'s batch norms that learn them, as they were at the
    last completed step (``commit``). A training forward pass updates them, so a step that a
    signal abandons would leave its batch counted in the last.pt written then, and the resumed
    run would count that batch again; ``restore`` takes it out. Without such layers (a ViT,
    CATR's frozen batch norm) both do nothing."""

    def __init__(self, model):
        self.live = [buffer for module in model.modules()
                     if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
                     and module.track_running_stats
                     for buffer in (module.running_mean, module.running_var,
                                    module.num_batches_tracked)]
        self.kept = [buffer.clone() for buffer in self.live]

    def commit(self):
        if self.live:
            torch._foreach_copy_(self.kept, self.live)

    def restore(self):
        if self.live:
            torch._foreach_copy_(self.live, self.kept)


class EpochSums:
    """An epoch's training sums, kept on the device (no host sync per step), and a copy of them
    at each completed optimizer step (``commit``): what last.pt keeps when a signal cuts the
    epoch short, and what ``saved`` (that copy, from last.pt) restarts from.

    ``count`` is what the loss is averaged over: images, or caption tokens (a tensor is fine).
    """

    def __init__(self, device, saved=None):
        saved = saved or {"batches": 0, "seconds": 0.0, "loss_sum": 0.0, "count": 0, "images": 0}
        self.device = device
        self.loss_sum = torch.tensor(saved["loss_sum"], dtype=torch.float64, device=device)
        self.count = torch.tensor(saved["count"], dtype=torch.int64, device=device)
        self.images, self.batches = saved["images"], saved["batches"]
        self._seconds_before = saved["seconds"]
        self._start = time.perf_counter()
        self._committed = (self.loss_sum.clone(), self.count.clone(), self.images, self.batches,
                           self._seconds_before)

    def add(self, mean_loss, count, images):
        self.loss_sum += mean_loss.detach().double() * count
        self.count += count
        self.images += images

    def seconds(self):
        return self._seconds_before + time.perf_counter() - self._start

    def commit(self, batches):
        self.batches = batches
        self._committed = (self.loss_sum.clone(), self.count.clone(), self.images, batches,
                           self.seconds())

    def progress(self):
        """The sums at the last commit, as plain numbers."""
        loss_sum, count, images, batches, seconds = self._committed
        return {"batches": batches, "seconds": seconds, "loss_sum": loss_sum.item(),
                "count": int(count.item()), "images": images}

    def progress_of_all_ranks(self):
        """[progress() of rank 0, of rank 1, ...]; every rank calls it at the same step."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return [self.progress()]
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, self.progress())
        return parts

    def mean_loss(self):
        """The mean so far; a host sync, so a progress bar asks for it now and then (Every)."""
        return (self.loss_sum / self.count.clamp(min=1)).item()

    def totals(self):
        """{'train_loss' (mean over ranks), 'images' (summed), 'seconds'}."""
        loss_sum, count, images = sum_over_ranks(
            [self.loss_sum.item(), self.count.item(), self.images], self.device)
        return {"train_loss": loss_sum / max(count, 1), "images": int(images),
                "seconds": self.seconds()}


class Every:
    """True at most once per ``seconds`` when called: how often a progress bar reads values that
    would make the host wait for the GPU."""

    def __init__(self, seconds=1.0):
        self.seconds = seconds
        self.next = 0.0

    def __call__(self):
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + self.seconds
        return True


def optimizer_step(model, optimizer, scheduler, scaler, clip_grad, computed):
    """The end of an optimizer step: the gradients clipped to norm ``clip_grad`` (0 or None: not
    clipped), the optimizer stepped through the loss scaler, then the schedule.

    Without gradients (``computed`` False: every image of the step's batches was unreadable) the
    optimizer and the scaler are left alone (an fp16 scaler fails without gradients), and the
    schedule still steps: it keeps its place by step, which exact resumes rely on, and torch's
    warning about stepping it before the optimizer says nothing then.
    """
    if not computed:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            scheduler.step()
        return
    if clip_grad:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()


def train_steps(model, loader, optimizer, scheduler, scaler, device, sums, stop, step_seed, *,
                loss_of, placeholder_forward, grad_accum=1, clip_grad=0.0, desc="train"):
    """Train over ``loader``, the rest of an epoch after the ``sums.batches`` already done, an
    optimizer step every ``grad_accum`` batches, adding to ``sums`` (EpochSums).

    ``loss_of(batch)`` runs the forward pass of a readable batch and returns (loss, what the
    loss is averaged over, images). ``step_seed(step)`` seeds each optimizer step's random
    draws. ``stop`` (Interruptible) may raise StopRequested, leaving ``sums`` and the batch
    norms' statistics as at the last completed optimizer step. ``placeholder_forward()``: a
    forward pass of one made-up input, for the batches where this process, under torchrun, has
    no readable image (join_the_gradient_all_reduce).
    """
    model.train()
    total = sums.batches + len(loader)
    progress = tqdm(loader, desc=desc, initial=sums.batches, total=total,
                    disable=not is_main_process(), dynamic_ncols=True)
    show = Every(1.0)
    statistics = BatchNormStatistics(model)
    optimizer.zero_grad(set_to_none=True)
    computed = False  # gradients in this optimizer step, from a batch or the all-reduce
    try:
        for i, batch in enumerate(progress, start=sums.batches):
            if i % grad_accum == 0:
                step_seed(i // grad_accum)
            last_micro = (i + 1) % grad_accum == 0 or i + 1 == total
            # DDP all-reduces the gradients at the step's last batch only
            sync = (contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync")
                    else model.no_sync())
            if batch is not None:
                with sync:
                    loss, count, images = loss_of(batch)
                    scaler.scale(loss / grad_accum).backward()
                sums.add(loss, count, images)
                computed = True
            elif hasattr(model, "no_sync"):  # under torchrun the others wait for this process
                with sync:
                    join_the_gradient_all_reduce(model, placeholder_forward)
                computed = True
            if last_micro:
                with stop.committing():
                    optimizer_step(model, optimizer, scheduler, scaler, clip_grad, computed)
                    optimizer.zero_grad(set_to_none=True)
                    sums.commit(i + 1)
                    statistics.commit()
                computed = False
                stop.check(device)
                if show():
                    progress.set_postfix(loss=f"{sums.mean_loss():.4f}",
                                         lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    except StopRequested:
        statistics.restore()  # the abandoned step's batches
        raise


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
    return DistributedDataParallel(model,
                                   device_ids=[device.index] if device.type == "cuda" else None)


def validation_loader(dataset, batch_size, workers, collate, device, dist_info, pin_memory=None):
    """A loader of this process's share of ``dataset``: every world_size-th item, so that sums
    over the processes count each item once. ``pin_memory``: by default, beside a GPU."""
    share = Subset(dataset, range(dist_info.rank, len(dataset), dist_info.world_size))
    # workers started anew for each pass, and gone after it (see EpochLoader.close)
    return DataLoader(share, batch_size, num_workers=workers, collate_fn=collate,
                      pin_memory=device.type == "cuda" if pin_memory is None else pin_memory)


def open_run(args, format_name, dist_info):
    """Check a training run's --out and --resume before any work; return (this process's
    device, the last.pt that --resume names or None, its loader workers).

    The last.pt must be ``format_name``'s, hold a run state, have epochs left and have been run
    with the options given now, RESUME_MAY_CHANGE and STARTING_WEIGHTS aside: its optimizer and
    schedule go on as they were, so another --lr would be recorded in args.json and not used,
    and another --batch-size would break the exact resume. Options left out (None: see
    hw3core.cli.parse_run_args) take the run's values; a validation set may move but not be
    added. --out must be a folder (created here) that holds no other run: its checkpoints would
    replace the other's (best.pt too, however well the new run scores).
    """
    resume = None
    if args.resume:
        resume = load_checkpoint(args.resume)
        check_format(resume, format_name, args.resume)
        if not isinstance(resume, dict) or "optimizer" not in resume:
            raise UserError(f"{args.resume} is not a last.pt checkpoint (no optimizer state)")
        _take_the_runs_options(resume, args)
        if resume["epoch"] >= args.epochs:
            raise UserError(f"{args.resume} has finished its {args.epochs} epochs: nothing is "
                            "left to resume")
    last = Path(args.out) / "last.pt"
    if last.is_file() and not (args.resume and Path(args.resume).resolve() == last.resolve()):
        raise UserError(f"{args.out} holds another run ({last}): add --resume {last} to go on "
                        "with it, or give another --out")
    require_writable_folder(args.out)
    device = pick_device(args.device, dist_info)
    return device, resume, share_cores(args.workers, device, dist_info.local_world_size)


def _take_the_runs_options(resume, args):
    def flag(key, value):
        name = key.replace("_", "-")
        if value is None:
            return f"no --{name}"
        if isinstance(value, bool):  # the switches are --name and --no-name
            return f"--{name}" if value else f"--no-{name}"
        return f"--{name} " + (" ".join(map(str, value)) if isinstance(value, (list, tuple))
                               else str(value))

    changed = []
    for key, was in resume.get("args", {}).items():
        now = getattr(args, key, was)
        if key in ("val_dir", "val_json"):  # the data may move; a validation set is not added
            if now is None:
                setattr(args, key, was)
            elif was is None:
                changed.append((key, was, now))
        elif key in STARTING_WEIGHTS:
            setattr(args, key, was)
        elif key in RESUME_MAY_CHANGE or was == now:
            continue
        elif now is None:  # left out
            setattr(args, key, was)
        else:
            changed.append((key, was, now))
    if changed:
        key, was, now = changed[0]
        more = f" (and {len(changed) - 1} more option(s))" if len(changed) > 1 else ""
        raise UserError(f"{args.resume} was run with {flag(key, was)}; this command gives "
                        f"{flag(key, now)}{more}: resume it with its own options (its run's "
                        "args.json), or give another --out for a new run")


def replace_run(run):
    """Clear ``run``, a run folder that a demo or a benchmark names and owns, for its new run."""
    if (Path(run) / "last.pt").is_file():
        print(f"replacing the previous run in {run}", flush=True)
    shutil.rmtree(run, ignore_errors=True)


def start_run_folder(out, args):
    """Create ``out``, remove what a killed checkpoint write left there, and record the run's
    resolved options in out/args.json (rank 0 only)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    write_text_atomic(out / "args.json", json.dumps(vars(args), indent=2) + "\n")


def run_state(optimizer, scheduler, scaler, args, in_epoch=None):
    """What last.pt holds beside the weights so that --resume continues exactly (restore_run).
    ``in_epoch``: the batches done and the sums so far of an epoch cut short by a signal."""
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "args": vars(args), "in_epoch": in_epoch}


def restore_run(resume, optimizer, scheduler, scaler):
    """Put a last.pt's run state back in place; returns (history, epochs already done, the
    interrupted epoch's progress or None)."""
    optimizer.load_state_dict(resume["optimizer"])
    scheduler.load_state_dict(resume["scheduler"])
    scaler.load_state_dict(resume["scaler"])
    return resume["history"], resume["epoch"], resume.get("in_epoch")


def train_epochs(args, dist_info, device, loader, optimizer, scheduler, scaler, resume, *,
                 train_epoch, validate, best, weights, report_epoch, curves, best_files=None,
                 flops_per_image=None):
    """The epochs of a run (args.epochs in all), from where ``resume`` (a last.pt) left off.

    Each epoch ``train_epoch(e)`` trains on ``loader`` (e as Epochs yields it) and ``validate()``
    (None without a validation set) returns the val_* figures. The epoch's record then goes, whole,
    into args.out: metrics.jsonl, last.pt (``weights(epochs done, the last record)`` plus the run
    state) and best.pt when the record's ``best[0]`` beats every earlier epoch's, with
    ``best_files(epoch)`` ([(path, text)]) written right after it. ``report_epoch(record,
    improved)`` prints it. At the end, curves.png (``curves``: plot_history's panels) and a line
    naming the checkpoints, ``best[1]`` formatting the best value. ``flops_per_image``
    (training) adds train_tflops to the records.
    """
    out = Path(args.out)
    history, start, in_epoch = [], 0, None
    if resume is not None:
        history, start, in_epoch = restore_run(resume, optimizer, scheduler, scaler)
    key, best_label = best
    best_value = max((h[key] for h in history if key in h), default=None)
    device_name = describe_device(device, dist_info.world_size)
    if dist_info.is_main:
        start_run_folder(out, args)

    writer = CheckpointWriter()

    def save(epoch_done, in_epoch=None, improved=False):
        save_epoch(writer, out, weights(epoch_done, history[-1] if history else {}),
                   run_state(optimizer, scheduler, scaler, args, in_epoch), history, improved,
                   best_files(epoch_done) if improved and best_files is not None else ())

    with Epochs(args.epochs, start, in_epoch, loader, device, dist_info, args.seed, out,
                save, finish=writer.wait) as epochs:
        for e in epochs:
            train_epoch(e)
            e.stop.check_sent()
            record = e.sums.totals()
            # each file was named as it failed; headers that open can still hide bodies that don't
            if not record["images"]:
                raise UserError("none of the training images could be read")
            if validate is not None:
                started = time.perf_counter()
                record.update(validate())
                record["val_seconds"] = time.perf_counter() - started
                if not record["val_images"]:
                    raise UserError("none of the validation images could be read")
            with e.committing():
                record.update(epoch=e.index + 1, lr=optimizer.param_groups[0]["lr"],
                              images_per_s=record["images"] / record["seconds"])
                if flops_per_image:
                    record["train_tflops"] = record["images_per_s"] * flops_per_image / 1e12
                record.update(epoch_seconds=record["seconds"] + record.get("val_seconds", 0.0),
                              device=device_name)
                history.append(record)
                improved = key in record and (best_value is None or record[key] > best_value)
                if improved:
                    best_value = record[key]
                if dist_info.is_main:
                    save(e.index + 1, improved=improved)
                    report_epoch(record, improved)
        writer.wait()  # where a signal during the wait stops the run as one during an epoch
    if dist_info.is_main:
        if history:
            plot_history(history, out / "curves.png", curves)
        best_line = ("" if best_value is None else
                     f", best {best_label.format(best_value)} in {out / 'best.pt'}")
        print0(f"wrote {out / 'last.pt'}{best_line}")
    return history
