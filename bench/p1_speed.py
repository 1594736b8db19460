"""ViT-B/16 at 384 speed: this project's model (timm, fused attention) against
pytorch-pretrained-vit's own ViT, on the same input, for inference and for a training step; on a
GPU also the ways of running the project's model that could lift it (--variants).

    python bench/p1_speed.py                              # CPU, fp32
    python bench/p1_speed.py --device cuda --variants     # GPU, bf16 autocast

Also measures a plain fp32 (CPU) or bf16 (GPU) matrix product of the size of ViT-B's MLP in the
same run, as the rate the model's inference is compared with. The variants: torch.compile (its
compile time reported), the fused SGD step (one kernel for all parameters instead of several per
tensor), and a doubled batch. Prints a markdown table and writes the figures as JSON.
"""
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.measure import machine, median_seconds, write_result
from bench.tables import p1_speed as p1_speed_table
from hw3core.cli import parser, run_cli
from hw3core.runtime import autocast, pick_device
from p1.model import build_model, forward_flops_per_image, make_arch

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_rate(device, tokens):
    """FLOP/s of a (tokens x 768) @ (768 x 3072) product: ViT-B's MLP, its biggest GEMM.

    On a GPU 20 of them are queued between two syncs, as the model queues its kernels: one
    product per sync would add the sync's latency to a fraction of a millisecond of work.
    """
    products = 20 if device.type == "cuda" else 1
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(tokens, 768, device=device, dtype=dtype)
    b = torch.randn(768, 3072, device=device, dtype=dtype)
    out = torch.empty(tokens, 3072, device=device, dtype=dtype)

    def products_in_a_row():
        for _ in range(products):
            torch.mm(a, b, out=out)

    seconds = median_seconds(products_in_a_row, 10, device) / products
    return 2 * tokens * 768 * 3072 / seconds


def ppvit_model(num_classes):
    try:
        import pytorch_pretrained_vit
    except ImportError:
        return None
    return pytorch_pretrained_vit.ViT("B_16_imagenet1k", pretrained=False, num_classes=num_classes)


def first_and_median(fn, repeats, device):
    """(seconds of the first call, median seconds of the next ``repeats``): the first call of a
    compiled model is its compilation."""
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, median_seconds(fn, repeats, device, warmup=False)


def measure(model, device, batch, train_batch, repeats, precision, compile=False, fused=False):
    """(inference images/s, training images/s, seconds spent compiling or None). The model
    leaves on the CPU without gradients, also when a variant fails (out of memory at the doubled
    batch): the next row starts as clean as the first."""
    try:
        return _measure(model, device, batch, train_batch, repeats, precision, compile, fused)
    finally:
        model.zero_grad(set_to_none=True)
        model.cpu()


def _measure(model, device, batch, train_batch, repeats, precision, compile, fused):
    model.to(device)
    net = torch.compile(model) if compile else model
    x = torch.randn(batch, 3, 384, 384, device=device)

    @torch.inference_mode()
    def infer():
        with autocast(device, precision):
            net(x)

    model.eval()
    infer_first, infer_s = first_and_median(infer, repeats, device)
    xt = torch.randn(train_batch, 3, 384, 384, device=device)
    target = torch.randint(0, 37, (train_batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9, fused=fused)

    def step():
        with autocast(device, precision):
            loss = F.cross_entropy(net(xt).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    train_first, train_s = first_and_median(step, repeats, device)
    compile_s = infer_first - infer_s + train_first - train_s if compile else None
    return batch / infer_s, train_batch / train_s, compile_s


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, help="inference batch (default 4 CPU, 64 GPU)")
    p.add_argument("--train-batch-size", type=int, help="training batch (default 2 CPU, 32 GPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", action="store_true",
                   help="also torch.compile, the fused optimizer step and a doubled batch")
    p.add_argument("--out", type=Path, help="the JSON (default: bench/results/"
                   "p1_speed_<cpu|cuda>.json)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch_size or (64 if gpu else 4)
    train_batch = args.train_batch_size or (32 if gpu else 2)
    precision = "bf16" if gpu else "fp32"
    torch.manual_seed(0)

    ours = build_model(make_arch("B_16_imagenet1k", 37))
    flops = forward_flops_per_image(ours)
    runs = [("this project (timm, fused SDPA)", ours, {})]
    theirs = ppvit_model(37)
    if theirs is not None:
        runs.append(("pytorch-pretrained-vit", theirs, {}))
    if args.variants:  # torch.compile last: the slowest to run, and the likeliest to fail
        runs += [("this project, fused SGD step", ours, dict(fused=True)),
                 (f"this project, fused SGD step, batches {2 * batch} / {2 * train_batch}", ours,
                  dict(fused=True, batch=2 * batch, train_batch=2 * train_batch)),
                 ("this project, torch.compile, fused SGD step", ours,
                  dict(fused=True, compile=True))]
    out = args.out or RESULTS / f"p1_speed_{device.type}.json"

    def save(rows, peak):
        for r in rows:
            if "error" not in r:
                r["share_of_matmul_rate"] = r["inference_tflops"] * 1e12 / peak
        result = dict(classes=37, gflop_per_image=flops / 1e9, matmul_tflops=peak / 1e12,
                      matmul_tokens=batch * 577, batch=batch, train_batch=train_batch, rows=rows)
        write_result(out, "ViT-B/16 at 384: images/s and TFLOP/s for inference and a training "
                     "step, against a plain matrix product", device=device, quiet=True, **result)
        return result

    # the reference rate is timed first for the rows saved as they come (a run cut short by
    # bench/gpu.sh's time limit keeps them), and again after them, on a warm GPU
    peak = matmul_rate(device, batch * 577)
    rows = []
    for name, model, options in runs:
        sizes = dict(batch=options.pop("batch", batch),
                     train_batch=options.pop("train_batch", train_batch))
        try:
            infer_ips, train_ips, compile_s = measure(model, device, sizes["batch"],
                                                      sizes["train_batch"], args.repeats,
                                                      precision, **options)
        except Exception as error:  # kept in the table; the other rows are measured
            rows.append({"model": name, **sizes, "error": f"{type(error).__name__}: {error}"})
            print(f"{name}: failed: {rows[-1]['error']}", file=sys.stderr, flush=True)
        else:
            rows.append({"model": name, **sizes, "inference_images_per_s": infer_ips,
                         "inference_tflops": infer_ips * flops / 1e12,
                         "training_images_per_s": train_ips,
                         "training_tflops": train_ips * 3 * flops / 1e12, "compile_s": compile_s})
        save(rows, peak)
    peak = max(peak, matmul_rate(device, batch * 577))

    print(f"## ViT-B/16 at 384 x 384 ({machine(device)})\n")
    print(f"Forward pass: {flops / 1e9:.1f} GFLOP per image; a training step counts 3x. "
          f"Reference: one {batch * 577} x 768 x 3072 matrix product at "
          f"{peak / 1e12:.3f} TFLOP/s.\n")
    print("\n".join(p1_speed_table(save(rows, peak))))
    if theirs is None:
        print("\n(pytorch-pretrained-vit is not installed here: its row is missing)")
    print(f"\nwrote {out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
