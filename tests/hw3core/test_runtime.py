"""How a process shares its cores between data workers and compute threads, and joins and
leaves a torchrun process group."""
import contextlib
import types

import pytest
import torch

import hw3core.runtime as runtime
from hw3core.errors import UserError
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
    cores(2)  # more processes than cores: each computes on one thread, without a worker
    assert share_cores(None, GPU, processes=4) == 0 and torch.get_num_threads() == 1


def test_a_thread_cap_set_at_start_is_kept(cores, monkeypatch):
    cores(16)
    monkeypatch.setattr(runtime, "_THREADS_AT_START", 2)  # OMP_NUM_THREADS=2, say
    share_cores(0, CPU)
    assert torch.get_num_threads() == 2


def test_loader_workers_are_as_many_as_their_batches_fit_in_shared_memory(
        monkeypatch, capsys, tmp_path):
    def free(megabytes):
        monkeypatch.setattr(runtime.shutil, "disk_usage",
                            lambda folder: types.SimpleNamespace(free=megabytes << 20))

    hw3_1_batch = 64 * 3 * 384 * 384  # 28 MB of uint8 images
    free(64)  # a container's default: one batch in use, none to spare for a worker's two
    assert runtime.fit_shared_memory(4, hw3_1_batch, folder=tmp_path) == 0
    note = capsys.readouterr().out
    assert f"note: {tmp_path} has 64 MB free" in note and "--shm-size" in note
    free(8192)
    assert runtime.fit_shared_memory(15, hw3_1_batch, folder=tmp_path) == 15
    assert capsys.readouterr().out == ""
    # torchrun's processes on one machine share it: 512 MB each holds 18 batches, those of 8
    # workers (two each) and the one in use
    assert runtime.fit_shared_memory(15, hw3_1_batch, processes=16, folder=tmp_path) == 8
    capsys.readouterr()
    free(0)
    assert runtime.fit_shared_memory(0, hw3_1_batch, folder=tmp_path) == 0  # nothing to fit
    assert runtime.fit_shared_memory(4, hw3_1_batch, folder=tmp_path / "none") == 4  # not Linux
    assert capsys.readouterr().out == ""


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # the context is built, not entered
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


def test_each_process_of_a_node_takes_the_gpu_of_its_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no GPU is touched here
    second_node = runtime.Distributed(rank=9, world_size=16, local_rank=1, local_world_size=8)
    assert runtime.pick_device("auto", second_node) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cuda asked for, but no CUDA GPU is visible"):
        runtime.pick_device("cuda")
