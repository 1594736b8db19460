"""What users get from a fixed set of commands, as fingerprints: record them before a refactor,
compare after it. Identical files mean nothing changed for users.

    python bench/outputs.py record bench/results/outputs.json   # before
    python bench/outputs.py compare bench/results/outputs.json  # after: lists every difference

The commands run in this process on synthetic data made with fixed seeds, on the CPU:
p1/train.py (a 2-epoch tiny run; its metrics.jsonl), p1/inference.py (hw3_1.sh's CSV),
p1/visualize.py attention and rollout (.npy), p2/inference.py (JSON lines) and p2/visualize.py
(.npy) with a small captioner built from a fixed seed. Timing fields (seconds, images/s, TFLOP/s)
and the device line are left out; figures (PNG) are not compared, since matplotlib's bytes
depend on its version.
"""
import hashlib
import json
import sys
import tempfile
from pathlib import Path

from hw3core.cli import parser, run_cli


TIMING = {"seconds", "images_per_s", "train_tflops", "epoch_seconds", "val_seconds", "device"}


def fingerprints():
    """{output name: sha256 of the file, or the metrics without timing fields}."""
    import torch

    from hw3core.cli import run_cli
    from p1 import inference as p1_inference, train as p1_train, visualize as p1_visualize
    from p1.data import make_shapes_set
    from p2 import inference as p2_inference, visualize as p2_visualize
    from p2.model import build_model, save_captioner

    def run(main, argv):
        run_cli(main, [str(a) for a in argv])

    def digest(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    torch.set_num_threads(1)  # the same sums in the same order on any machine of one CPU kind
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_shapes_set(tmp / "train", 96, image_size=32, seed=1)
        make_shapes_set(tmp / "val", 24, image_size=32, seed=2, start_id=1000)
        run(p1_train.main, ["--model", "tiny", "--pretrained", "none", "--image-size", "32",
                            "--train-dir", tmp / "train", "--val-dir", tmp / "val",
                            "--out", tmp / "run", "--epochs", "2", "--batch-size", "16",
                            "--workers", "0", "--device", "cpu", "--seed", "0"])
        found["p1/train.py metrics.jsonl"] = [
            {k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        checkpoint = tmp / "run" / "best.pt"
        run(p1_inference.main, ["--images", tmp / "val", "--out", tmp / "pred.csv",
                                "--checkpoint", checkpoint, "--device", "cpu"])
        found["p1/inference.py pred.csv"] = digest(tmp / "pred.csv")
        for method in ("last", "rollout"):
            out = tmp / f"maps_{method}"
            run(p1_visualize.main, ["attention", "--checkpoint", checkpoint, "--images",
                                    tmp / "val", "--out", out, "--method", method, "--save-npy",
                                    "--device", "cpu"])
            for path in sorted(out.glob("*.npy"))[:4]:
                found[f"p1/visualize.py attention --method {method} {path.name}"] = digest(path)
        torch.manual_seed(0)
        save_captioner(build_model(dict(backbone="resnet18", dilation=False, hidden_dim=64,
                                        nheads=4, enc_layers=1, dec_layers=2,
                                        dim_feedforward=64)), tmp / "p2.pt")
        images = sorted((tmp / "val").glob("*.png"))[:3]
        (tmp / "p2_images").mkdir()
        for path in images:
            (tmp / "p2_images" / path.name).write_bytes(path.read_bytes())
        common = ["--checkpoint", tmp / "p2.pt", "--images", tmp / "p2_images", "--max-len", "6",
                  "--device", "cpu"]
        run(p2_inference.main, [*common, "--out", tmp / "captions.jsonl"])
        found["p2/inference.py captions.jsonl"] = digest(tmp / "captions.jsonl")
        run(p2_visualize.main, [*common, "--out", tmp / "figures", "--save-npy", "--heads", "all"])
        for path in sorted((tmp / "figures").glob("*.npy")):
            found[f"p2/visualize.py {path.name}"] = digest(path)
    return found


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("action", choices=("record", "compare"))
    p.add_argument("file", help="the JSON of fingerprints")
    args = p.parse_args(argv)
    found = fingerprints()
    path = Path(args.file)
    if args.action == "record":
        from bench.measure import write_result
        write_result(path, "fingerprints of the outputs of fixed commands (bench/outputs.py)",
                     outputs=found)
        return
    recorded = json.loads(path.read_text())["outputs"]
    differences = sorted(name for name in recorded.keys() | found.keys()
                         if recorded.get(name) != found.get(name))
    for name in differences:
        print(f"differs: {name}")
    print(f"{len(recorded) - len(differences)} of {len(recorded)} outputs identical")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
