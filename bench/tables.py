"""The tables of bench/RESULTS.md, generated from the JSON files in bench/results/.

Each table in RESULTS.md sits between two marker comments,

    <!-- table: KIND from results/FILE.json -->
    | ... |
    <!-- end table -->

and is rendered from FILE.json by RENDERERS[KIND]; the prose around the tables is left alone.
Files named *_transcribed.json ("transcribed": true) hold figures from runs that cannot be
repeated here, such as the GPU run and the recipe search, copied once from RESULTS.md.

    python -m bench.tables           # rewrite RESULTS.md's tables from their JSON
    python -m bench.tables --check   # change nothing; exit 1 naming each table that differs
"""
import difflib
import json
import re
import statistics
import sys
from functools import partial
from pathlib import Path

from hw3core.cli import parser, run_cli
from hw3core.errors import UserError
from hw3core.files import write_text_atomic

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
MARKER = re.compile(r"^<!-- table: (\S+) from (\S+) -->\n(.*?)^<!-- end table -->$",
                    re.M | re.S)
P1_TARGET_POINTING = 0.8  # bench/p1_attention.py's target, judged on the last layer's map


def row(cells):
    # an empty cell is written "| |", as the hand-made tables had it
    return "|" + "".join(f" {cell} |" if cell != "" else " |" for cell in map(str, cells))


def table(header, rows, align):
    """Markdown lines; ``align`` has a letter a column: l (---) or r (---:)."""
    return [row(header), row("---:" if a == "r" else "---" for a in align), *map(row, rows)]


def bold(cells, columns):
    return [f"**{cell}**" if i in columns else cell for i, cell in enumerate(cells)]


# RESULTS.md's words for names the benchmarks write; an unknown name is shown as it is
LEARNED_MEASURES = {
    "p1_tiny_best_val_acc": "tiny ViT, best val accuracy (4 classes)",
    "p1_tiny_last_over_first_train_loss": "tiny ViT, last / first epoch train loss",
    "p1_digits_from_scratch_best_val_acc": "tiny ViT from random weights with the from-scratch "
    "defaults, best val accuracy on 500 real digits (10 classes)",
    "p2_second_over_first_train_loss": "small captioner, 2nd / 1st epoch train loss",
    "p2_second_over_first_val_loss": "small captioner, 2nd / 1st epoch val loss",
}
LOADERS = {"default (no worker on a CPU)": "default (no worker on a CPU, 2 compute threads)",
           "--workers 1": "`--workers 1` (1 worker, 1 compute thread)"}
MIN_CROPS = {"0.08": "0.08 (torchvision's default)", "0.25": "0.25 (this project's default)"}


def sweep_learned(data):
    rows, previous = [], None
    for name, bar in data["bars"].items():
        values = [run[name] for run in data["runs"]]
        worst = min(values) if bar["higher_is_better"] else max(values)
        test = "same" if bar["test"] == previous else f"`{bar['test']}`"
        previous = bar["test"]
        rows.append([LEARNED_MEASURES.get(name, name), test,
                     f"{'>=' if bar['higher_is_better'] else '<'} {bar['bar']}",
                     f"{worst:.3f}", f"{sum(values) / len(values):.3f}"])
    return table(["measure", "test", "bar", "worst run", "mean"], rows, "llrrr")


def shared_cpu(data):
    return table(["loader", "alone (s)", "beside one busy process (s)", "slowdown"],
                 [[LOADERS.get(r["loader"], r["loader"]), f"{r['alone_s']:.2f}",
                   f"{r['beside_one_busy_process_s']:.2f}", f"{r['slowdown']:.2f}x"]
                  for r in data["rows"]], "lrrr")


def min_crop(data):
    objects = [f"{float(s):.0%}" for s in next(iter(data["kept_share"].values()))]
    objects[0] = f"object {objects[0]} of the photo"
    return table(["--min-crop", *objects],
                 [[MIN_CROPS.get(crop, crop),
                   *("100%" if v == 1 else f"{v:.1%}" for v in shares.values())]
                  for crop, shares in data["kept_share"].items()], "l" + "r" * len(objects))


def p1_speed(data):
    # rows of their own batch size (the variants) name it in each cell; compiled ones add a column
    own_batches = any("batch" in r for r in data["rows"])
    compiled = any(r.get("compile_s") is not None for r in data["rows"])

    def at(r, key):
        return f" ({r[key]})" if own_batches else ""

    header = ["model", "inference images/s" + ("" if own_batches else f" (batch {data['batch']})"),
              "inference TFLOP/s", "share of matmul rate",
              "training images/s" + ("" if own_batches else f" (batch {data['train_batch']})"),
              "training TFLOP/s", *(["compile s"] if compiled else [])]

    def cells(r):
        if "error" in r:  # a variant that failed: what it raised, in place of its figures
            return [f"failed: {r['error']}", *[""] * (len(header) - 2)]
        return [f"{r['inference_images_per_s']:.2f}{at(r, 'batch')}",
                f"{r['inference_tflops']:.3f}", f"{r['share_of_matmul_rate']:.0%}",
                f"{r['training_images_per_s']:.2f}{at(r, 'train_batch')}",
                f"{r['training_tflops']:.3f}",
                *([f"{r['compile_s']:.0f}" if r.get("compile_s") is not None else "-"]
                  if compiled else [])]

    return table(header, [[r["model"] + (f", run {r['run']}" if "run" in r else ""), *cells(r)]
                          for r in data["rows"]], "l" * len(header))


# the two p1_attention layer tables name the same five columns, the older one at length
SHORT = ("pointing, overlap", "chance", "pointing, centre", "chance", "mass ratio")
DESCRIBED = ("pointing (highest cell overlaps the box)", "chance",
             "pointing (cell centre in the box)", "chance", "mass in box / box's share")


def last_layer(maps):
    return max((kind for kind in maps if kind.startswith("layer ")), key=lambda k: int(k[6:]))


def scores(m):
    return [*(f"{m[k]:.3f}" for k in ("hit", "hit_chance", "centre_hit", "centre_chance")),
            f"{m['mass_ratio']:.2f}"]


def p1_attention_layers(data, header):
    maps = data["models"]["trained"]["maps"]
    last, rows = last_layer(maps), []
    labels = {"rollout": "rollout (all layers)", last: f"last layer ({last[6:]}), mean of heads"}
    for kind, m in maps.items():
        cells = [labels.get(kind, f"{kind}, mean of heads"), *scores(m)]
        # bold: the figures the target is judged by, where they meet it
        met = kind == last and m["hit"] >= P1_TARGET_POINTING
        rows.append(bold(cells, (0, 1, 3) if met else ()))
    return table(["map ([CLS] query, patch keys)", *header], rows, "l" * 6)


def p1_attention_baselines(data):
    return table(["model (last layer's map, mean of heads)", "classification accuracy", *SHORT],
                 [[name, f"{m['accuracy']:.3f}", *scores(m["maps"][last_layer(m["maps"])])]
                  for name, m in data["models"].items()], "l" * 7)


def p1_position_similarity(data):
    """A row per distance metric and model state, a column per distance (the metrics reach
    different distances: a cell is left empty where one has none)."""
    sims = data["position_similarity"]
    distances = sorted({d for states in sims.values() for by_distance in states.values()
                        for d in by_distance}, key=int)
    return table(["distance", *distances],
                 [[f"{metric}, {state}",
                   *(f"{by_distance[d]:.3f}" if d in by_distance else "" for d in distances)]
                  for metric, states in sims.items() for state, by_distance in states.items()],
                 "l" * (1 + len(distances)))


def p2_speed(data):
    return table(["tokens", "CATR loop (s/image)", "project (s/image)", "speed-up",
                  "eager decoder only, cached (s)", "decoder only, prefix re-run (s)"],
                 [[r["tokens"],
                   "skipped" if r["catr_loop_s"] is None else f"{r['catr_loop_s']:.2f}",
                   f"{r['project_s']:.3f}",
                   "-" if r["speed_up"] is None else f"**{r['speed_up']:.1f}x**",
                   f"{r['decoder_cached_s']:.3f}",
                   f"{r['decoder_prefix_rerun_s']:.3f}"] for r in data["rows"]], "r" * 6)


def p2_decoding_parts(data):
    """The parts of a p2_speed run beside its table: batched rates, one decoder step, the
    encoder at batch 1, and (GPU) the graphs checked against the eager path."""
    rows = []
    if "batched" in data:
        b = data["batched"]
        rows += [[f"batched captioning, {b['tokens']} tokens, batch {b['batch']}",
                  f"{b['images_per_s']:.1f} images/s"],
                 ["the same, with the last layer's word maps",
                  f"{b['with_maps_images_per_s']:.1f} images/s"],
                 ["one image at a time", f"{b['one_at_a_time_images_per_s']:.1f} images/s"]]
    for batch, ms in data.get("decoder_step_ms", {}).items():
        rows.append([f"one decoder step ({data['decoder_path']}), batch {batch}", f"{ms:.3f} ms"])
    for batch, c in (data.get("ended_check") or {}).items():
        rows.append([f"end test of the static search, batch {batch}",
                     f"{c['check_ms']:.3f} ms per asking; cheapest interval for a "
                     f"{data['caption_steps']}-step caption: {c['best_interval']} "
                     f"(used: {c['interval']})"])
    for path, ms in (data.get("encoder_ms") or {}).items():
        if ms is not None:
            how = "eagerly" if path == "eager" else "replayed as a CUDA graph"
            rows.append([f"backbone and encoder, one image, {how}", f"{ms:.2f} ms"])

    def agreement(c):
        worst = c["max_row_difference"]
        return (f"{c['identical']} of {c['captions']} captions identical; attention rows "
                f"within {'-' if worst is None else f'{worst:.1e}'}")
    for precision, c in (data.get("graphs_against_eager") or {}).items():
        rows.append([f"graphs against the eager path, {precision}", agreement(c)])
        if "default_kernels_against_math" in c:
            rows.append([f"eager path, torch's default attention kernels against its math "
                         f"kernel, {precision}", agreement(c["default_kernels_against_math"])])
    return table(["measure", "value"], rows, "lr")


def jobs(data):
    """bench/jobs.py: each whole job's wall-clock time against the issue's target."""
    return table(["job", "wall-clock s", "target s", "images"],
                 [[name, f"failed: {job['error']}" if "error" in job else f"{job['seconds']:.1f}",
                   data["targets_s"][name], job.get("images", "")]
                  for name, job in data["jobs"].items()], "lrrr")


def jobs_loaders(data):
    """bench/jobs.py: the fine-tune's training rate against its loader's alone, and against
    loaders whose CPU workers augment images decoded once into RAM, or decode and augment them
    every epoch (the loaders a run cut short did not time are left out; those that failed say
    so)."""
    workers = data.get("loader_cpu_workers")
    trained = data.get("train_images_per_s_by_epoch")  # none where the fine-tune failed
    rows = [["training, from metrics.jsonl (median over the epochs)",
             statistics.median(trained) if trained else None],
            ["its training loader alone, as the run built it (`--image-cache auto`)",
             data.get("loader_images_per_s")],
            [f"the loader with `--image-cache ram --workers {workers}`",
             data.get("loader_ram_workers_images_per_s")],
            [f"the loader with `--image-cache off --workers {workers}`",
             data.get("loader_cpu_workers_images_per_s")]]
    rows = [[what, f"{rate:.0f}"] for what, rate in rows if rate is not None]
    rows += [[f"the loader {name}", f"failed: {error}"]
             for name, error in data.get("loader_errors", {}).items()]
    return table(["what", "images/s"], rows, "lr")


P2_LAYER_HEADER = ["decoder layer", "pointing: cell centre in the box", "colour words",
                   "shape words", "pointing: cell overlaps the box",
                   "pointing game: within 15 px"]
MASS = "mass in box / box's share"


def p2_layer_rows(layers, chance, mass):
    """The rows of a per-decoder-layer table of word-map measures, with the mass ratio if
    ``mass``; the best layer (the target is judged on it) in bold."""
    best = max(layers, key=lambda r: r["centre"])
    rows = [bold([f"{r['layer']}" + (" (last)" if r is layers[-1] else ""),
                  *(f"{r[k]:.3f}" for k in ("centre", "colour_words", "shape_words", "overlap",
                                            "within_15px")),
                  *([f"{r['mass_ratio']:.2f}"] if mass else [])],
                 (0, 1, 4, 5) if r is best else ()) for r in layers]
    rows.append(["chance (a uniformly random cell)", f"{chance['centre']:.3f}", "", "",
                 f"{chance['overlap']:.3f}", f"{chance['within_15px']:.3f}",
                 *([""] if mass else [])])
    return rows


def p2_attention_layers(data):
    return table(P2_LAYER_HEADER, p2_layer_rows(data["rows"], data["chance"], mass=False),
                 "l" * 6)


def p2_attention_layers_mass(data):
    return table([*P2_LAYER_HEADER, MASS],
                 p2_layer_rows(data["models"]["trained"]["layers"], data["chance"], mass=True),
                 "l" * 7)


def p2_attention_baselines(data):
    """Each model's exact captions and its word maps in the last decoder layer and, if another,
    in the layer where the trained model's maps point best, the three models side by side."""
    models, chance = data["models"], data["chance"]
    trained = models["trained"]["layers"]
    last, best = trained[-1]["layer"], max(trained, key=lambda r: r["centre"])["layer"]
    shown = {last: f"{last} (last)"}
    if best != last:
        shown[best] = f"{best} (the trained model's best)"
    return table(["model", "decoder layer", "exact caption", "pointing: cell centre in the box",
                  "chance", "pointing: cell overlaps the box", "chance", MASS],
                 [[name, label, f"{m['exact']:.3f}", f"{r['centre']:.3f}",
                   f"{chance['centre']:.3f}", f"{r['overlap']:.3f}", f"{chance['overlap']:.3f}",
                   f"{r['mass_ratio']:.2f}"]
                  for layer, label in shown.items() for name, m in models.items()
                  for r in [m["layers"][layer]]], "l" * 8)


def p2_recipe_search(data):
    return table(["run", "backbone (stride, grid)", "enc + dec layers", "scenes x epochs",
                  "train s", "exact", "strict pointing, layer 0 / 1 / 2"],
                 [[r["run"], f"{r['backbone']} ({r['stride']}, {r['grid'][0]} x {r['grid'][1]})",
                   f"{r['enc_layers']} + {r['dec_layers']}", f"{r['scenes']:,} x {r['epochs']}",
                   r["train_s"], f"{r['exact']:.3f}",
                   " / ".join(f"{p:.2f}" for p in r["strict_pointing"])]
                  for r in data["rows"]], "llllrrl")


def p2_demo_precision(data):
    epochs = list(data["rows"][0]["val_exact_by_epoch"])
    return table(["precision", "seed", f"val exact, epoch {' / '.join(epochs)}",
                  f"train loss, epoch {epochs[-1]}", "images/s"],
                 [[r["precision"] + (f" ({r['note']})" if r["note"] else ""), r["seed"],
                   " / ".join(f"{v:.3f}" for v in r["val_exact_by_epoch"].values()),
                   f"{r['train_loss_last_epoch']:.3f}", f"about {r['images_per_s_about']}"]
                  for r in data["rows"]], "l" * 5)


def sweep_demo(data):
    groups = {}
    for run in data["runs"]:
        groups.setdefault((run["threads"], run["parallel"]), []).append(run)

    def median(values):
        values = sorted(values)
        return (values[(len(values) - 1) // 2] + values[len(values) // 2]) / 2

    return table(["threads x runs side by side", "runs", f"best.pt at target ({data['target']})",
                  "lowest best.pt val exact", "median train s", "median images/s"],
                 [[f"{threads} x {parallel}", len(runs),
                   sum(r["best_pt_val_exact"] >= data["target"] for r in runs),
                   f"{min(r['best_pt_val_exact'] for r in runs):.3f}",
                   f"{median([r['seconds'] for r in runs]):.0f}",
                   f"{median([r['images_per_s'] for r in runs]):.1f}"]
                  for (threads, parallel), runs in groups.items()], "lrrrrr")


def plain_cells(line):
    """A rendered table line's cells without markdown's bold and code marks (for the report)."""
    return [cell.strip().replace("**", "").replace("`", "")
            for cell in line.strip().strip("|").split("|")]


def marked_tables(text):
    """[(kind, JSON path relative to RESULTS.md)] of the marked tables in ``text``, in order."""
    return [(kind, source) for kind, source, _ in MARKER.findall(text)]


RENDERERS = {
    "sweep_learned": sweep_learned, "shared_cpu": shared_cpu, "min_crop": min_crop,
    "p1_speed": p1_speed,
    "p1_attention_layers": partial(p1_attention_layers, header=SHORT),
    "p1_attention_layers_described": partial(p1_attention_layers, header=DESCRIBED),
    "p1_attention_baselines": p1_attention_baselines,
    "p1_position_similarity": p1_position_similarity,
    "p2_speed": p2_speed, "p2_attention_layers": p2_attention_layers,
    "p2_attention_layers_mass": p2_attention_layers_mass,
    "p2_attention_baselines": p2_attention_baselines,
    "p2_recipe_search": p2_recipe_search, "p2_demo_precision": p2_demo_precision,
    "sweep_demo": sweep_demo, "p2_decoding_parts": p2_decoding_parts, "jobs": jobs,
    "jobs_loaders": jobs_loaders,
}


def regenerate(text, folder):
    """``text`` with every marked table rendered from its JSON (paths relative to ``folder``),
    and the names of the tables that changed."""
    stale = []

    def fill(match):
        kind, source, old = match.groups()
        if kind not in RENDERERS:
            raise ValueError(f"unknown table kind {kind!r}; known: {', '.join(RENDERERS)}")
        new = "\n".join(RENDERERS[kind](json.loads((folder / source).read_text()))) + "\n"
        if new != old:
            stale.append(f"{kind} from {source}")
        return f"<!-- table: {kind} from {source} -->\n{new}<!-- end table -->"

    return MARKER.sub(fill, text), stale


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 naming each table that differs from its JSON")
    p.add_argument("--results-md", type=Path, default=RESULTS_MD, help="(%(default)s)")
    args = p.parse_args(argv)
    try:
        text = args.results_md.read_text()
        new, stale = regenerate(text, args.results_md.parent)
    except (OSError, ValueError) as err:  # a missing file, a broken JSON, an unknown kind
        raise UserError(str(err)) from err
    if args.check:
        sys.stdout.writelines(difflib.unified_diff(
            text.splitlines(True), new.splitlines(True), f"{args.results_md} (as it is)",
            f"{args.results_md} (from the JSON)"))
        for name in stale:
            print(f"{args.results_md}: table {name} differs from its JSON", file=sys.stderr)
        return 1 if stale else 0
    if stale:
        write_text_atomic(args.results_md, new)
    print(f"{args.results_md}: {len(stale)} table(s) rewritten: {', '.join(stale) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
