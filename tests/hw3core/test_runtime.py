"""How a process shares its cores between data workers and compute threads."""
import pytest
import torch

import hw3core.runtime as runtime
from hw3core.runtime import share_cores

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture
def cores(monkeypatch):
    """Pretend this process may use N cores; torch's thread count is put back afterwards."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(runtime, "_THREADS_AT_START", 64)

    def set_cores(count):
        monkeypatch.setattr(runtime, "usable_cores", lambda: count)
    yield set_cores
    torch.set_num_threads(threads)


@pytest.mark.parametrize("count, asked, device, workers, threads", [
    (2, None, CPU, 0, 2),   # a CPU computes with every core; loading waits between steps
    (2, None, GPU, 1, 1),   # beside a GPU a worker keeps it fed
    (16, None, GPU, 4, 12),
    (2, 4, CPU, 1, 1),      # asked for more than fit: cut to the cores less one, said once
    (1, 2, GPU, 0, 1),
    (8, 2, CPU, 2, 6),
])
def test_workers_plus_threads_never_exceed_the_cores(cores, capsys, count, asked, device, workers,
                                                     threads):
    cores(count)
    assert share_cores(asked, device) == workers
    assert torch.get_num_threads() == threads
    note = capsys.readouterr().out
    assert ("instead of" in note) == (asked is not None and asked > workers)


def test_processes_on_one_machine_split_its_cores(cores):
    cores(16)
    assert share_cores(None, GPU, processes=4) == 3 and torch.get_num_threads() == 1


def test_a_thread_cap_set_at_start_is_kept(cores, monkeypatch):
    cores(16)
    monkeypatch.setattr(runtime, "_THREADS_AT_START", 2)  # OMP_NUM_THREADS=2, say
    share_cores(0, CPU)
    assert torch.get_num_threads() == 2


def test_autocast_is_bf16_on_cuda_and_off_on_a_cpu_unless_asked():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with runtime.autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with runtime.autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    # the CUDA context is built without a GPU; only bench/gpu.sh runs under it
    context = runtime.autocast(cuda)
    assert (context.device, context.fast_dtype) == ("cuda", torch.bfloat16)
    assert runtime.autocast(cuda, "fp32").__class__.__name__ == "nullcontext"
