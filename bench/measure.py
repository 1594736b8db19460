"""What the benchmarks share: a description of the machine, a synchronising timer, and the
geometry of a map's cells against an object's box for the pointing rules."""
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
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


def write_result(path, what, device=torch.device("cpu"), quiet=False, **fields):
    """Save a benchmark's results as JSON at ``path``, with what it measured, when and where
    (``device``: the one it measured); ``quiet``: without saying so (a partial result)."""
    from hw3core.files import write_text_atomic

    result = {"what": what, "date": datetime.now(timezone.utc).isoformat(),
              "machine": machine(device), **fields}
    write_text_atomic(path, json.dumps(result, indent=1) + "\n")
    if not quiet:
        print(f"\nwrote {path}")


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


def cell_geometry(grid, cell_size, box):
    """How each cell of an attention map lies against an object's box, in the image's pixels.

    Cell (r, c) covers [r*ch, (r+1)*ch) x [c*cw, (c+1)*cw), (ch, cw) = ``cell_size``; ``box`` is
    (x0, y0, x1, y1) with exclusive ends. Returns three (rows, cols) arrays: the cell's area
    inside the box, whether its centre lies inside the box, and the distance from its centre to
    the box (0 inside). They give the pointing rules: the map's highest cell overlaps the box,
    has its centre in it, or lies within a tolerance of it (the pointing game's 15 pixels).
    """
    (rows, cols), (ch, cw) = grid, cell_size
    x0, y0, x1, y1 = box
    top, left = np.arange(rows) * ch, np.arange(cols) * cw
    over_y = np.clip(np.minimum(y1, top + ch) - np.maximum(y0, top), 0, None)
    over_x = np.clip(np.minimum(x1, left + cw) - np.maximum(x0, left), 0, None)
    cy, cx = top + ch / 2, left + cw / 2
    inside = np.outer((cy >= y0) & (cy < y1), (cx >= x0) & (cx < x1))
    dy = np.maximum(np.maximum(y0 - cy, cy - y1), 0)
    dx = np.maximum(np.maximum(x0 - cx, cx - x1), 0)
    return np.outer(over_y, over_x), inside, np.hypot(dy[:, None], dx[None, :])
