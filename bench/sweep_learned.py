"""Rerun the training of every test that asserts a learned quality, over seeds, thread counts and
CPU kernels, and print each measure's lowest value beside the test's bar.

Another CPU computes other floats (other vector kernels, another order of sums), so a bar must
hold with margin over what these runs give, not just over one machine's run:
    python -m bench.sweep_learned [--seeds 5] [--threads 1 2] [--out FILE]
Each run is a fresh process with HW3_TEST_SEED, the thread count and ATEN_CPU_CAPABILITY set
(default: the plain kernels; native: this CPU's widest); the tests read HW3_TEST_SEED.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hw3core.cli import parser, run_cli

ROOT = Path(__file__).resolve().parents[1]

# The test that asserts each run's measures (their bars: tests.conftest.LEARNED_BARS)
TESTS = {"p1_tiny": "tests/p1/test_train.py::test_tiny_preset_learns_the_synthetic_set",
         "p1_digits":
             "tests/p1/test_train.py::test_from_random_weights_the_defaults_learn_real_digits",
         "p2": "tests/p2/test_train.py::test_training_lowers_the_loss_and_writes_the_run"}


def measure_once():
    """The measures of one run, in this process (its seed and threads come from the caller)."""
    from p1.engine import fit as fit_p1
    from p2.engine import fit as fit_p2
    from p1.train import parse_args
    from tests.conftest import (digits_argv, learned_measures, make_digits_data, make_shapes_data,
                                run_history, tiny_args)
    from tests.p2.test_train import make_scenes, train_args

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "shapes").mkdir()
        fit_p1(tiny_args(*make_shapes_data(tmp / "shapes"), tmp / "p1"))
        fit_p1(parse_args(digits_argv(*make_digits_data(tmp / "digits"), tmp / "digits_run")))
        fit_p2(train_args(make_scenes(tmp / "scenes"), tmp / "p2"))
        return {**learned_measures("p1_tiny", run_history(tmp / "p1")),
                **learned_measures("p1_digits", run_history(tmp / "digits_run")),
                **learned_measures("p2", run_history(tmp / "p2"))}


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (%(default)s)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--kernels", nargs="+", default=["default", "native"])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "sweep_learned.json"),
                   help="the JSON (default: bench/results/sweep_learned.json)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure_once()))
        return
    runs = []
    for seed in range(args.seeds):
        for threads in args.threads:
            for kernel in args.kernels:
                env = dict(os.environ, HW3_TEST_SEED=str(seed), OMP_NUM_THREADS=str(threads))
                env.pop("ATEN_CPU_CAPABILITY", None)
                if kernel != "native":
                    env["ATEN_CPU_CAPABILITY"] = kernel
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "bench.sweep_learned", "--one"],
                                      env=env, cwd=ROOT, capture_output=True, text=True,
                                      check=True)
                values = json.loads(done.stdout.strip().splitlines()[-1])
                runs.append({"seed": seed, "threads": threads, "kernel": kernel,
                             "seconds": round(time.perf_counter() - start, 1), **values})
                print(json.dumps(runs[-1]), flush=True)
    print(f"\n{len(runs)} runs: seeds 0..{args.seeds - 1}, threads {args.threads}, kernels "
          f"{args.kernels}\n")
    print("| measure | test | bar | worst of the runs | mean |")
    print("| --- | --- | ---: | ---: | ---: |")
    from tests.conftest import LEARNED_BARS
    for name, (run_name, _, bar, higher) in LEARNED_BARS.items():
        values = [run[name] for run in runs]
        worst = min(values) if higher else max(values)
        print(f"| {name} | `{TESTS[run_name]}` | {'>=' if higher else '<'} {bar} | {worst:.4f} | "
              f"{sum(values) / len(values):.4f} |")
    import torch
    from bench.measure import write_result
    write_result(args.out, "learned-quality test sweep", cores=len(os.sched_getaffinity(0)),
                 native_kernel=torch.backends.cpu.get_cpu_capability(),
                 bars={name: {"test": TESTS[run_name], "bar": bar, "higher_is_better": higher}
                       for name, (run_name, _, bar, higher) in LEARNED_BARS.items()},
                 runs=runs)


if __name__ == "__main__":
    run_cli(main)
