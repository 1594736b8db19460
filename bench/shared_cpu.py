"""How much a training epoch slows beside another CPU-bound job, and how fast it is alone.

    python bench/shared_cpu.py [--scenes 480] [--out bench/results/shared_cpu.json]

Trains the small captioner one epoch on synthetic scenes with the demo's recipe (p2/train.py
in a fresh process, as a user runs it), first alone, then beside one other CPU-bound process
(a pure-Python loop, one core busy), for the default loader setting and for one worker. The
epoch's training seconds come from metrics.jsonl. Run it on an otherwise quiet machine.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from hw3core.cli import parser, run_cli

ROOT = Path(__file__).resolve().parents[1]


def epoch_seconds(data, out, workers):
    from p2.configs import SCENE_RECIPE

    command = [sys.executable, str(ROOT / "p2" / "train.py"),
               "--train-json", str(data / "captions.json"), "--train-dir", str(data / "images"),
               "--out", str(out), *SCENE_RECIPE, "--epochs", "1", *workers]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["seconds"]


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--scenes", type=int, default=480)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "shared_cpu.json"))
    args = p.parse_args(argv)
    from bench.measure import machine, write_result
    from hw3core.runtime import usable_cores
    from p2.data import make_scene_set

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_scene_set(tmp / "scenes", args.scenes, seed=1)
        for i, (label, workers) in enumerate((("default (no worker on a CPU)", []),
                                              ("--workers 1", ["--workers", "1"]))):
            quiet = epoch_seconds(tmp / "scenes", tmp / f"quiet_{i}", workers)
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                shared = epoch_seconds(tmp / "scenes", tmp / f"shared_{i}", workers)
            finally:
                busy.kill()
                busy.wait()
            rows.append({"loader": label, "alone_s": round(quiet, 2),
                         "beside_one_busy_process_s": round(shared, 2),
                         "slowdown": round(shared / quiet, 2)})
    print(f"{machine()}, {usable_cores()} usable cores; one epoch of {args.scenes} scenes\n")
    print("| loader | alone (s) | beside one busy process (s) | slowdown |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['loader']} | {row['alone_s']} | {row['beside_one_busy_process_s']} | "
              f"{row['slowdown']}x |")
    write_result(args.out, "epoch time alone and beside one CPU-bound process",
                 cores=usable_cores(), scenes=args.scenes, rows=rows)


if __name__ == "__main__":
    run_cli(main)
