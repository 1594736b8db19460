"""The scripts: the one rule for the interpreter (venv.sh), test.sh's parallel tests,
bench/gpu.sh's refusal without a GPU (and its benchmarks', each run alone), and the Python entry
points' --help and argument errors, which come before torch is imported."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, WORKER_THREADS, env_without_torch, script_env


def python_chosen(project, **env):
    environment = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    environment.update(env)
    done = subprocess.run(["bash", "-c", f". '{project}/venv.sh' && hw3_python"],
                          env=environment, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_python_is_PYTHON_else_the_venv_beside_the_scripts_else_python3(tmp_path):
    project = tmp_path / "a project"
    project.mkdir()
    shutil.copy(ROOT / "venv.sh", project / "venv.sh")
    assert python_chosen(project) == "python3"
    venv_python = project / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/bin/sh\n")
    venv_python.chmod(0o755)
    assert python_chosen(project) == str(venv_python)
    assert python_chosen(project, PYTHON="/opt/py/bin/python3") == "/opt/py/bin/python3"


def test_parallel_test_processes_compute_on_their_share_of_the_cores():
    if WORKER_THREADS is None:
        pytest.skip("the tests run in one process here, or OMP_NUM_THREADS was set")
    import torch

    # torch loaded after the share was set (never above it), and the scripts a test starts get it
    assert torch.get_num_threads() <= WORKER_THREADS
    assert script_env()["OMP_NUM_THREADS"] == str(WORKER_THREADS)


def test_gpu_sh_refuses_a_machine_without_cuda_before_it_writes_anything(tmp_path):
    out = tmp_path / "out"
    usage = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--help"],
                           env=script_env(), capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: bash bench/gpu.sh")
    refused = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), str(out)],
                             env=script_env(CUDA_VISIBLE_DEVICES=""),
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == (f"error: {sys.executable} has no torch that sees a CUDA GPU; run "
                              "this on a GPU machine (PYTHON=... names another interpreter)\n")
    assert not out.exists()


@pytest.mark.parametrize("benchmark", ["jobs", "p1_speed", "p2_speed"])
def test_a_gpu_benchmark_run_alone_without_cuda_is_one_line(benchmark, capsys, monkeypatch):
    import runpy

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    # as python -m runs it, in this process: its import of torch takes seconds in a new one
    # (an imported copy, another test's, stays out of the way: runpy warns of one)
    monkeypatch.delitem(sys.modules, f"bench.{benchmark}", raising=False)
    monkeypatch.setattr("sys.argv", [f"bench/{benchmark}.py", "--device", "cuda"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(f"bench.{benchmark}", run_name="__main__")
    assert exit_info.value.code == 2
    assert capsys.readouterr() == ("", "error: --device cuda asked for, but no CUDA GPU is "
                                       "visible\n")


ENTRY_SCRIPTS = sorted(str(path.relative_to(ROOT)) for problem in ("p1", "p2")
                       for path in (ROOT / problem).glob("*.py")
                       if 'if __name__ == "__main__":' in path.read_text())


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_every_scripts_help_and_argument_errors_come_before_importing_torch(tmp_path, script):
    env = env_without_torch(tmp_path / "no_torch")
    usage = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env,
                           capture_output=True, text=True)
    assert usage.returncode == 0 and usage.stdout.startswith("usage:"), usage.stderr
    wrong = subprocess.run([sys.executable, script, "--no-such-option"], cwd=ROOT, env=env,
                           capture_output=True, text=True)
    # argparse's one line: a missing required argument, or else the unknown option
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert wrong.stderr.startswith(f"{Path(script).name}: error: ")


@pytest.mark.parametrize("command, refusal", [
    (["p1/train.py", "--train-dir", "data"], "error: no weights to start B_16_imagenet1k from: "
     "run bash hw3_download.sh"),
    (["p2/train.py", "--train-json", "c.json", "--train-dir", "data"],
     "error: no weights to start from: give --init checkpoints/catr_v3.pth"),
    (["p2/train.py", "--train-json", "c.json", "--train-dir", "data", "--init", "catr_v3.pth",
      "--hidden-dim", "64"], "error: --init catr_v3.pth fixes the architecture; leave out "
     "--hidden-dim"),
])
def test_train_refuses_a_start_that_cannot_be_before_importing_torch(tmp_path, command, refusal):
    refused = subprocess.run(
        [sys.executable, *command, "--out", str(tmp_path / "run")], cwd=ROOT,
        env=env_without_torch(tmp_path / "no_torch", HW3_CKPT_DIR=str(tmp_path)),
        capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith(refusal), refused.stderr
    assert not (tmp_path / "run").exists()
