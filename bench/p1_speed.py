"""ViT-B/16 at 384 speed: this project's model (timm, fused attention) against
pytorch-pretrained-vit's own ViT, on the same input, for inference and for a training step.

    python bench/p1_speed.py                 # CPU, fp32
    python bench/p1_speed.py --device cuda   # GPU, bf16 autocast

Also measures a plain fp32 (CPU) or bf16 (GPU) matrix product of the size of ViT-B's MLP in the
same run, as the rate the model's inference is compared with. Prints a markdown table.
"""
import argparse

import torch
import torch.nn.functional as F

from bench.measure import machine, median_seconds
from hw3core.runtime import autocast, pick_device
from p1.model import build_model, forward_flops_per_image, make_arch


def matmul_rate(device, tokens):
    """FLOP/s of one (tokens x 768) @ (768 x 3072) product: ViT-B's MLP, its biggest GEMM."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(tokens, 768, device=device, dtype=dtype)
    b = torch.randn(768, 3072, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, 10, device)
    return 2 * tokens * 768 * 3072 / seconds


def ppvit_model(num_classes):
    try:
        import pytorch_pretrained_vit
    except ImportError:
        return None
    return pytorch_pretrained_vit.ViT("B_16_imagenet1k", pretrained=False, num_classes=num_classes)


def measure(model, device, batch, train_batch, repeats, precision):
    model.to(device)
    x = torch.randn(batch, 3, 384, 384, device=device)

    @torch.no_grad()
    def infer():
        with autocast(device, precision):
            model(x)

    model.eval()
    infer_s = median_seconds(infer, repeats, device)
    xt = torch.randn(train_batch, 3, 384, 384, device=device)
    target = torch.randint(0, 37, (train_batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)

    def step():
        with autocast(device, precision):
            loss = F.cross_entropy(model(xt).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    train_s = median_seconds(step, repeats, device)
    model.cpu()
    return batch / infer_s, train_batch / train_s


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, help="inference batch (default 4 CPU, 64 GPU)")
    p.add_argument("--train-batch-size", type=int, help="training batch (default 2 CPU, 32 GPU)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch_size or (64 if gpu else 4)
    train_batch = args.train_batch_size or (32 if gpu else 2)
    precision = "bf16" if gpu else "fp32"
    torch.manual_seed(0)

    ours = build_model(make_arch("B_16_imagenet1k", 37))
    flops = forward_flops_per_image(ours)
    rows = [("this project (timm, fused SDPA)", *measure(ours, device, batch, train_batch,
                                                          args.repeats, precision))]
    theirs = ppvit_model(37)
    if theirs is not None:
        rows.append(("pytorch-pretrained-vit", *measure(theirs, device, batch, train_batch,
                                                         args.repeats, precision)))
    peak = matmul_rate(device, batch * 577)

    print(f"## ViT-B/16 at 384 x 384 ({machine(device)})\n")
    print(f"Forward pass: {flops / 1e9:.1f} GFLOP per image; a training step counts 3x. "
          f"Reference: one {batch * 577} x 768 x 3072 matrix product at {peak / 1e12:.3f} TFLOP/s.\n")
    print(f"| model | inference images/s (batch {batch}) | inference TFLOP/s | share of matmul "
          f"rate | training images/s (batch {train_batch}) | training TFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, infer_ips, train_ips in rows:
        print(f"| {name} | {infer_ips:.2f} | {infer_ips * flops / 1e12:.3f} | "
              f"{infer_ips * flops / peak:.0%} | {train_ips:.2f} | "
              f"{train_ips * 3 * flops / 1e12:.3f} |")
    if theirs is None:
        print("\n(pytorch-pretrained-vit is not installed here: its row is missing)")


if __name__ == "__main__":
    main()
