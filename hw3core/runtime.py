"""Where and how to run: device, precision, torchrun/DDP, seeding, rank-0 output."""
import contextlib
import gc
import os
import random
import shutil
import traceback
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError

# The compute threads torch chose at start (OMP_NUM_THREADS or the cores); share_cores never
# raises the count above it, so a cap set by the user or a test holds.
_THREADS_AT_START = torch.get_num_threads()


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # the processes on this machine, which share its cores

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1


@contextlib.contextmanager
def distributed():
    """The process group that torchrun describes in the environment, joined for the ``with``
    block and left after it, also when it fails; a single process without torchrun.

    The group must be the last to go. A DDP model holds it too, from a reference cycle, and if
    the model went last its reducer would destroy the group while holding the GIL. That waits
    for gloo's threads, one of which may need the GIL to free the last collective's tensors: with
    torch 2.11, 4 of 7 torchrun runs on a CPU hung so at their end. So on leaving, the
    frames of a failure are cleared and the cycles collected, and the model goes while the group
    is still registered. The block itself must not hold the model: run the work in a function
    that it calls, and which lets go of the model when it ends (closures keep what they refer
    to after their frames are cleared).
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        yield Distributed()
        return
    info = Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                       int(os.environ.get("LOCAL_RANK", "0")),
                       int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", info.local_rank))
    else:
        dist.init_process_group("gloo")
    try:
        yield info
    except BaseException as err:
        # the finished frames' locals, a model's too, along the chain: a stop's Interrupted
        # keeps the StopRequested raised inside the step
        failure, seen = err, set()
        while failure is not None and id(failure) not in seen:
            seen.add(id(failure))
            traceback.clear_frames(failure.__traceback__)
            failure = failure.__cause__ or failure.__context__
        raise
    finally:
        gc.collect()
        dist.destroy_process_group()


def pick_device(name="auto", dist_info=Distributed()):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but no CUDA GPU is visible")
        return torch.device("cuda", dist_info.local_rank)
    return torch.device(name)


def describe_device(device, processes=1):
    """What a run computed on, for its records: 'NVIDIA H100 80GB HBM3' or 'CPU, 2 threads', with
    the number of processes when there are several."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} thread(s)"
    return name + (f" x {processes} processes" if processes > 1 else "")


def usable_cores():
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def share_cores(workers, device, processes=1):
    """Split this process's share of the cores between DataLoader workers and compute threads.

    Returns the number of workers to start, at most the cores less one. ``workers`` None picks:
    none on a CPU, whose cores compute either way, and up to 4 beside a GPU, to keep it fed.
    Sets torch's compute threads to the cores left, so that threads plus workers never exceed
    the cores: more make torch's threads wait for each other (2 threads and a worker on 2 cores
    ran with half the CPU time in the kernel). ``processes``: the processes sharing the machine
    (torchrun's LOCAL_WORLD_SIZE).
    """
    cores = max(1, usable_cores() // max(1, processes))
    wanted = (0 if device.type == "cpu" else 4) if workers is None else workers
    kept = min(wanted, cores - 1)
    torch.set_num_threads(max(1, min(_THREADS_AT_START, cores - kept)))
    if workers is not None and kept < workers:
        print0(f"note: {cores} core(s) here: {kept} data loader worker(s) instead of {workers}, "
               f"{torch.get_num_threads()} compute thread(s)")
    return kept


def fit_shared_memory(workers, batch_bytes, processes=1, folder="/dev/shm"):
    """The DataLoader workers, at most ``workers``, whose batches fit in the free space of
    ``folder``. Workers hand their batches over there, each up to two in flight (DataLoader's
    prefetch) besides the one in use, and a worker that finds it full dies of a bus error: a
    container's is 64 MB unless given more. Fewer than ``workers`` is said, with the remedy.
    ``processes``: the processes sharing the machine (torchrun's LOCAL_WORLD_SIZE)."""
    if workers == 0 or not os.path.isdir(folder):  # elsewhere than Linux: another mechanism
        return workers
    free = shutil.disk_usage(folder).free // max(1, processes)
    fits = max(0, (free // max(1, batch_bytes) - 1) // 2)
    if fits < workers:
        print0(f"note: {folder} has {free >> 20} MB free for this process, room for the batches "
               f"of {fits} data loader worker(s), not {workers} ({batch_bytes >> 20} MB a batch); "
               f"give it more (docker run --shm-size 8g) to use them all")
    return min(workers, fits)


def autocast(device, precision="auto"):
    """bf16 autocast on CUDA (the default there), nothing on CPU unless asked for."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sum_over_ranks(values, device):
    """Element-wise sums of a list of numbers over every process; the list itself alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def is_main_process():
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def print0(*args, **kwargs):
    if is_main_process():
        print(*args, **kwargs, flush=True)
