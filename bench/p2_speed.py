"""Captioning speed: this project's decoder against CATR's own loop, and batched throughput.

    python bench/p2_speed.py [--device cuda] [--quick]

CATR's predict script re-runs the whole model, backbone included, on its 128-position buffer for
every token (p2.decode.reference_greedy). The project runs the backbone and encoder once and the
decoder one position per step with cached keys and values. Both run the same random full-size
CATR on the same 299 x 224 photo; [SEP] is made impossible so that every caption has exactly the
asked number of tokens and both procedures do the same work. On a GPU the project decodes with the
static cache, each step replayed as a CUDA graph (p2.decode.greedy_search_static), and its timings
are of a folder's later batches: one untimed call of each shape records the graphs first. The
time of one such step is measured too, at batch 1 and at the throughput batch, on a GPU with the
cost of the search's end test (which waits for the GPU) and the interval between tests that suits
it, and the backbone and encoder at batch 1, eagerly and (CUDA) replayed as a graph
(p2.decode.CudaGraphs). On a GPU
it first checks what the graphs give against the eager path, in fp32 and in bf16, each batch in
its own autocast region as in use (the tests compare the two on a CPU only, where there are no
graphs), and what the eager path gives with torch's default attention kernels against its math
kernel. Prints a markdown table.
"""
import math
from pathlib import Path

import torch
from PIL import Image
from skimage import data
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.measure import machine, median_seconds, write_result
from bench.tables import p2_decoding_parts as p2_decoding_parts_table
from bench.tables import p2_speed as p2_speed_table
from hw3core.cli import parser, run_cli
from hw3core.runtime import autocast, pick_device
from p2.data import preprocess
import p2.decode
from p2.decode import (CudaGraphs, caption_images, encode_images, greedy_search,
                       greedy_search_static, reference_greedy)
from p2.model import EncodedImages, build_model
from p2.tokenizer import END_ID, START_ID

RESULTS = Path(__file__).resolve().parent / "results"
CAPTION_STEPS = 13  # COCO's captions: 12 word pieces on average, then [SEP]


def decoder_only(model, encoded, tokens, cache):
    """Decode ``tokens`` steps from encoded images, with the self-attention cache or re-running
    the decoder on the whole prefix at every step (the image keys and values are reused either
    way)."""
    device = encoded.memory.device
    with torch.inference_mode(), autocast(device):
        state = model.start_decoding(encoded)
        prefix = torch.full((1, 1), START_ID, device=device)
        for _ in range(tokens):
            if not cache:
                for layer in state.layers:
                    layer.k = layer.v = None
                state.length = 0
            logits, _ = model.decode(state, prefix if not cache else prefix[:, -1:])
            prefix = torch.cat((prefix, logits[:, -1:].argmax(-1)), 1)


def static_decoding(model, encoded, batch, device):
    """A function decoding ``batch`` copies of one encoded image with greedy_search_static,
    replayed as a CUDA graph on a GPU (recorded at its first call), given max_len and the
    end-test interval."""
    memory, pos, padding = (x.expand(batch, *x.shape[1:]) for x in
                            (encoded.memory, encoded.pos, encoded.padding))
    many = EncodedImages(memory.contiguous(), pos.contiguous(), padding.contiguous())
    graphs = CudaGraphs() if device.type == "cuda" else None

    def decode(length, check_every=None):
        with torch.inference_mode(), autocast(device):
            greedy_search_static(model, many, length, graphs=graphs, check_every=check_every)
    return decode


def decoder_step_ms(model, encoded, batch, steps, device):
    """Milliseconds per decoding step of greedy_search_static (timed as a difference of two
    lengths, which leaves out the per-call work)."""
    decode = static_decoding(model, encoded, batch, device)
    short, long = (median_seconds(lambda n=n: decode(n), 3, device) for n in (9, 9 + steps))
    return 1000 * (long - short) / steps


def ended_check(model, encoded, batch, device, step_ms, steps=40):
    """What the static search's end test costs: ms per asking (decoding with it at every step
    against never; no caption ends here), and the interval between askings that makes a caption
    of CAPTION_STEPS steps cheapest. Each asking waits for the GPU; each step decoded past the
    caption's end is wasted, half an interval on average."""
    decode = static_decoding(model, encoded, batch, device)
    every_step, never = (median_seconds(lambda k=k: decode(steps + 1, k), 3, device)
                         for k in (1, steps + 1))
    check_ms = max(0.0, 1000 * (every_step - never) / steps)

    def caption_ms(interval):
        return (interval - 1) / 2 * step_ms + math.ceil(CAPTION_STEPS / interval) * check_ms
    return {"check_ms": check_ms, "best_interval": min(range(1, 17), key=caption_ms),
            "interval": p2.decode.ENDED_CHECK_EVERY}


def encoder_ms(model, image, device, graphs=None):
    """Milliseconds to run the backbone and encoder on one image (with ``graphs``, the shape is
    recorded in the warm-up calls and then replayed)."""
    def encode():
        with torch.inference_mode(), autocast(device):
            encode_images(model, [image], graphs)
    encode()
    return 1000 * median_seconds(encode, 10, device)


def agreement(reference, other):
    """How many captions ``other`` gives exactly as ``reference`` does, and the largest difference
    between their last-layer attention rows where they agree (each a greedy search's
    (captions, rows))."""
    same = [a == b for a, b in zip(reference[0], other[0])]
    differences = [float((a.float() - b.float()).abs().max())
                   for a, b, s in zip(reference[1], other[1], same) if s]
    return {"identical": sum(same), "captions": len(same),
            "max_row_difference": max(differences, default=None)}


def graphs_against_eager(model, images, device, max_len=21, record=None):
    """Per precision: the graphed path (encoder graphs, then the static cache with each step
    replayed) against the eager path; and the eager path with torch's default attention kernels
    against its math kernel, the reference. Both paths pick their kernels the same way, so the
    first comparison cannot catch a fused kernel (torch may pick cuDNN's first on Hopper) that
    gets CATR's masks wrong; the second can. ``record``: CudaGraphs's, for tests."""
    found = {}
    for precision in ("fp32", "bf16"):
        graphs = CudaGraphs(record=record)

        def caption(batch, graphs=None):  # each batch in its own autocast region, as in use
            with torch.inference_mode(), autocast(device, precision):
                encoded = encode_images(model, batch, graphs)
                if graphs is None:
                    return greedy_search(model, encoded, max_len, (-1,))
                return greedy_search_static(model, encoded, max_len, (-1,), graphs)
        eager = caption(images)
        with sdpa_kernel(SDPBackend.MATH):
            math_kernel = caption(images)
        # graphs replayed on other inputs first, then on these (the encoder's is recorded on
        # its second use, the decoder's on its first)
        for batch in (images, images[::-1], images):
            graphed = caption(batch, graphs)
        found[precision] = {**agreement(eager, graphed),
                            "default_kernels_against_math": agreement(math_kernel, eager)}
    return found


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--quick", action="store_true",
                   help="skip the slowest measurement (CATR's loop for 127 tokens)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's); 1 keeps "
                   "timings steady on a machine shared with other work")
    p.add_argument("--batch", type=int, default=None, help="batch size for throughput "
                   "(default 8 on CPU, 64 on CUDA)")
    p.add_argument("--out", type=Path, help="the JSON (default: bench/results/"
                   "p2_speed_<cpu|cuda>.json)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model().to(device)
    with torch.no_grad():
        model.mlp.layers[-1].bias[END_ID] = -1e4  # captions run to max_len
    photo = Image.fromarray(data.astronaut()).crop((0, 64, 512, 448))  # 4:3, like most COCO
    image = preprocess(photo, model.config["input_size"])
    out = args.out or RESULTS / f"p2_speed_{device.type}.json"
    result = dict(threads=torch.get_num_threads(),
                  decoder_path=("static cache, CUDA graph" if device.type == "cuda"
                                else "static cache, no graph"),
                  caption_steps=CAPTION_STEPS, graphs_against_eager=None, rows=[])

    def save(complete=False):
        # after each part: a run stopped by its time limit keeps what it measured
        write_result(out, "caption decoding: seconds per image of the project's decoder against "
                     "CATR's loop, full-size CATR with random weights, one 299 x 224 image; "
                     "batched images/s; one decoder step", device=device, quiet=not complete,
                     complete=complete, **result)

    if device.type == "cuda":
        photos = [Image.fromarray(p).convert("RGB").resize((512, 384)) for p in
                  (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())]
        photos += [p.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in photos]
        result["graphs_against_eager"] = graphs_against_eager(
            model, [preprocess(p, model.config["input_size"]).to(device) for p in photos], device)
        save()
    # warm up both procedures: on a GPU the first call's kernel selection takes seconds
    caption_images(model, [image], max_len=3)
    reference_greedy(model, image, max_len=3)
    repeats = 3  # medians: the cheap measurements are noisy on a shared machine
    with torch.inference_mode(), autocast(device):
        on_device = image.to(device)
        encoded = encode_images(model, [on_device])

    def timed(fn, repeats, warmup=device.type == "cuda"):
        # everything was warmed up above, but on a GPU a graph is recorded at its shapes' first
        # (decoder) or second (encoder) use: one untimed call first. CATR's loop is too slow to
        # run twice.
        return median_seconds(fn, repeats, device, warmup=warmup)

    for tokens in (20, 127):
        project = timed(lambda: caption_images(model, [image], max_len=tokens + 1), repeats)
        if args.quick and tokens == 127:
            reference = None
        else:
            reference = timed(lambda: reference_greedy(model, image, max_len=tokens + 1), 1,
                              warmup=False)
        result["rows"].append({
            "tokens": tokens, "catr_loop_s": reference, "project_s": project,
            "speed_up": reference / project if reference is not None else None,
            "decoder_cached_s": timed(lambda: decoder_only(model, encoded, tokens, True),
                                      repeats),
            "decoder_prefix_rerun_s": timed(lambda: decoder_only(model, encoded, tokens, False),
                                            repeats)})
        save()

    batch = args.batch or (64 if device.type == "cuda" else 8)
    images = [image] * batch
    if device.type == "cuda":  # the batch's encoder graph is recorded at its second use
        caption_images(model, images, max_len=21)
    batched = timed(lambda: caption_images(model, images, max_len=21), repeats)
    with_maps = timed(lambda: caption_images(model, images, max_len=21, attention_layer=-1),
                      repeats)
    single = timed(lambda: [caption_images(model, [im], max_len=21) for im in images[:4]],
                   repeats) / 4
    result["batched"] = {"tokens": 20, "batch": batch, "images_per_s": batch / batched,
                         "with_maps_images_per_s": batch / with_maps,
                         "one_at_a_time_images_per_s": 1 / single}
    save()
    step_ms = {b: decoder_step_ms(model, encoded, b, 32, device) for b in (1, batch)}
    result["decoder_step_ms"] = {str(b): ms for b, ms in step_ms.items()}
    save()
    # on a CPU caption_images decodes eagerly, without the end test
    result["ended_check"] = {str(b): ended_check(model, encoded, b, device, ms)
                             for b, ms in step_ms.items()} if device.type == "cuda" else {}
    save()
    result["encoder_ms"] = {"eager": encoder_ms(model, on_device, device),
                            "graph": (encoder_ms(model, on_device, device, CudaGraphs())
                                      if device.type == "cuda" else None)}
    print(f"Machine: {machine(device)}; full-size CATR (ResNet-101), "
          f"random weights, one 299 x 224 image\n")
    print("\n".join(p2_speed_table(result)) + "\n")
    print("\n".join(p2_decoding_parts_table(result)))
    save(complete=True)


if __name__ == "__main__":
    run_cli(main)
