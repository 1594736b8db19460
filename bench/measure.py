"""What the benchmarks share: a description of the machine and a synchronising timer."""
import platform
import statistics
import time
from pathlib import Path

import torch


def machine(device=torch.device("cpu")):
    """'GPU name, bf16 autocast' or 'CPU model, N threads, fp32', then the torch version."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, bf16 autocast; torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {torch.get_num_threads()} threads, fp32; torch {torch.__version__}"


def median_seconds(fn, repeats, device=torch.device("cpu"), warmup=True):
    """Median wall time of ``repeats`` calls of ``fn``, the GPU's queue drained around each.

    The warm-up call (allocations, kernel selection) is not timed; leave it out only for calls
    too slow to repeat.
    """
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
