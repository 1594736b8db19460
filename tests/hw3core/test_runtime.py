"""How a process shares its cores between data workers and compute threads, and joins and
leaves a torchrun process group."""
import contextlib

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


class Model:
    """A stand-in for a DDP model: in a reference cycle, as DistributedDataParallel is."""

    def __init__(self):
        self.me = self


@pytest.mark.parametrize("fails", [False, True])
def test_a_ddp_model_goes_before_its_process_group(monkeypatch, fails):
    # destroyed last by the model's reducer, a gloo group can wait for its threads with the GIL
    # held and hang the run's end (torch 2.11); destroyed from Python, it lets them finish
    import gc
    import weakref

    import torch.distributed as dist

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: None)
    alive_at_destroy = []
    model = None
    monkeypatch.setattr(dist, "destroy_process_group",
                        lambda: alive_at_destroy.append(model() is not None))

    class Stop(Exception):
        pass

    def run(dist_info):  # as fit calls _fit: the model lives in the run's frames and closures
        nonlocal model
        net = Model()
        model = weakref.ref(net)

        def step(model):  # a failure in a step, turned into another as Epochs turns a stop
            if fails:
                raise RuntimeError("a failure in a step")
        try:
            try:
                step(net)
            except RuntimeError:
                raise Stop("stopped") from None
        finally:
            net = None

    gc.disable()  # no collection by chance before the group goes
    try:
        with pytest.raises(Stop) if fails else contextlib.nullcontext():
            with runtime.distributed() as dist_info:
                run(dist_info)
    finally:
        gc.enable()
    assert alive_at_destroy == [False]
