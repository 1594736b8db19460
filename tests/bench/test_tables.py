"""bench/RESULTS.md's tables are what bench/results/*.json give (bench/tables.py)."""
import copy
import json
import shutil
import subprocess
import sys

from bench import tables
from tests.conftest import ROOT

RESULTS = ROOT / "bench" / "results"


def test_results_md_tables_are_those_the_json_gives_and_every_table_is_marked():
    text = tables.RESULTS_MD.read_text()
    _, stale = tables.regenerate(text, tables.RESULTS_MD.parent)
    assert stale == [], f"edit the JSON and run python -m bench.tables: {stale}"
    # a table outside the markers would escape the check
    outside = tables.MARKER.sub("", text)
    assert not [line for line in outside.splitlines() if line.startswith("|")]


def test_a_changed_number_changes_the_table_and_check_names_it(tmp_path, capsys):
    data = json.loads((RESULTS / "p1_attention.json").read_text())
    render = tables.RENDERERS["p1_attention_layers"]
    changed = copy.deepcopy(data)
    changed["models"]["trained"]["maps"]["layer 4"]["hit"] = 0.85
    before, after = render(data), render(changed)
    assert "| last layer (4), mean of heads | 0.793 |" in "\n".join(before)
    # 0.85 meets the 0.8 target, so the row is also marked
    assert "| **last layer (4), mean of heads** | **0.850** |" in "\n".join(after)

    shutil.copytree(RESULTS, tmp_path / "results")
    shutil.copy(tables.RESULTS_MD, tmp_path / "RESULTS.md")
    (tmp_path / "results" / "p1_attention.json").write_text(json.dumps(changed))
    assert tables.main(["--check", "--results-md", str(tmp_path / "RESULTS.md")]) == 1
    assert "table p1_attention_layers from results/p1_attention.json" in capsys.readouterr().err
    # as CI would run it: the status reaches the shell
    check = subprocess.run([sys.executable, "-m", "bench.tables", "--check", "--results-md",
                            str(tmp_path / "RESULTS.md")], cwd=ROOT, capture_output=True)
    assert check.returncode == 1
    assert tables.main(["--results-md", str(tmp_path / "RESULTS.md")]) == 0
    assert tables.main(["--check", "--results-md", str(tmp_path / "RESULTS.md")]) == 0
    assert "**0.850**" in (tmp_path / "RESULTS.md").read_text()


def test_every_result_says_what_when_and_where_and_transcribed_ones_their_source():
    files = sorted(RESULTS.glob("*.json"))
    assert files
    for path in files:
        data = json.loads(path.read_text())
        assert {"what", "date", "machine"} <= data.keys(), path.name
        if data.get("transcribed") or path.stem.endswith("_transcribed"):
            assert data["transcribed"] is True and data["source"], path.name


def test_speed_rows_of_their_own_batch_and_compile_time_are_shown_as_such():
    # what bench/p1_speed.py --variants writes on a GPU: each row its batch, compiled ones a time
    row = {"inference_images_per_s": 100.0, "inference_tflops": 11.1,
           "share_of_matmul_rate": 0.5, "training_images_per_s": 30.0, "training_tflops": 10.0}
    lines = tables.RENDERERS["p1_speed"]({"batch": 64, "train_batch": 32, "rows": [
        {"model": "eager", "batch": 64, "train_batch": 32, "compile_s": None, **row},
        {"model": "compiled", "batch": 128, "train_batch": 64, "compile_s": 41.6, **row}]})
    assert lines[0].endswith("| training TFLOP/s | compile s |")
    assert lines[2] == "| eager | 100.00 (64) | 11.100 | 50% | 30.00 (32) | 10.000 | - |"
    assert lines[3] == "| compiled | 100.00 (128) | 11.100 | 50% | 30.00 (64) | 10.000 | 42 |"
    failed = {"model": "compiled", "batch": 64, "train_batch": 32,
              "error": "RuntimeError: Failed to find C compiler"}
    lines = tables.RENDERERS["p1_speed"]({"batch": 64, "train_batch": 32, "rows": [
        {"model": "eager", "batch": 64, "train_batch": 32, "compile_s": None, **row}, failed]})
    assert lines[3] == ("| compiled | failed: RuntimeError: Failed to find C compiler "
                        "| | | | |")  # the other rows' figures stand


def test_the_gpu_runs_jobs_and_decoding_parts_render_with_their_targets_and_checks():
    # what bench/jobs.py and bench/p2_speed.py write on a GPU, which no CI machine has
    jobs = {"targets_s": {"fine_tune": 90, "hw3_1": 20},
            "jobs": {"fine_tune": {"seconds": 71.24, "images": 3680, "epochs": 10},
                     "hw3_1": {"seconds": 12.06, "images": 2200}}}
    assert tables.RENDERERS["jobs"](jobs)[2:] == ["| fine_tune | 71.2 | 90 | 3680 |",
                                                  "| hw3_1 | 12.1 | 20 | 2200 |"]
    loaders = {"train_images_per_s_by_epoch": [400.0, 1310.4, 1290.0, 1330.0],
               "loader_images_per_s": 2100.2, "loader_cpu_workers": 15,
               "loader_ram_workers_images_per_s": 3050.0, "loader_cpu_workers_images_per_s": 1702.6}
    assert tables.RENDERERS["jobs_loaders"](loaders)[2:] == [
        "| training, from metrics.jsonl (median over the epochs) | 1300 |",
        "| its training loader alone, as the run built it (`--image-cache auto`) | 2100 |",
        "| the loader with `--image-cache ram --workers 15` | 3050 |",
        "| the loader with `--image-cache off --workers 15` | 1703 |"]
    # a job or a loader that failed says what it raised; the others' figures stand
    jobs["jobs"]["hw3_1"] = {"error": "CalledProcessError: ... returned non-zero exit status 1."}
    assert tables.RENDERERS["jobs"](jobs)[3] == (
        "| hw3_1 | failed: CalledProcessError: ... returned non-zero exit status 1. | 20 | |")
    failed = {"loader_images_per_s": 2100.2, "loader_errors": {"ram": "RuntimeError: bus error"}}
    assert tables.RENDERERS["jobs_loaders"](failed)[2:] == [
        "| its training loader alone, as the run built it (`--image-cache auto`) | 2100 |",
        "| the loader ram | failed: RuntimeError: bus error |"]
    cut_short = {"train_images_per_s_by_epoch": [1300.0]}  # by gpu.sh's limit, before loaders
    assert tables.RENDERERS["jobs_loaders"](cut_short)[2:] == [
        "| training, from metrics.jsonl (median over the epochs) | 1300 |"]
    parts = {"decoder_path": "static cache, CUDA graph",
             "batched": {"tokens": 20, "batch": 64, "images_per_s": 2500.0,
                         "with_maps_images_per_s": 2100.0, "one_at_a_time_images_per_s": 90.0},
             "decoder_step_ms": {"1": 0.41, "64": 0.52},
             "ended_check": {"1": {"check_ms": 0.052, "best_interval": 2, "interval": 8}},
             "caption_steps": 13,
             "encoder_ms": {"eager": 31.0, "graph": 6.5},
             "graphs_against_eager": {
                 "fp32": {"identical": 8, "captions": 8, "max_row_difference": 2.9e-8,
                          "default_kernels_against_math": {"identical": 6, "captions": 8,
                                                           "max_row_difference": 1.5e-3}},
                 "bf16": {"identical": 7, "captions": 8, "max_row_difference": None}}}
    lines = tables.RENDERERS["p2_decoding_parts"](parts)
    assert lines[2:5] == ["| batched captioning, 20 tokens, batch 64 | 2500.0 images/s |",
                          "| the same, with the last layer's word maps | 2100.0 images/s |",
                          "| one image at a time | 90.0 images/s |"]
    assert "| one decoder step (static cache, CUDA graph), batch 1 | 0.410 ms |" in lines
    assert "| backbone and encoder, one image, replayed as a CUDA graph | 6.50 ms |" in lines
    assert ("| end test of the static search, batch 1 | 0.052 ms per asking; cheapest interval "
            "for a 13-step caption: 2 (used: 8) |") in lines
    assert ("| graphs against the eager path, fp32 | 8 of 8 captions identical; attention rows "
            "within 2.9e-08 |") in lines
    assert ("| eager path, torch's default attention kernels against its math kernel, fp32 | 6 of "
            "8 captions identical; attention rows within 1.5e-03 |") in lines
    assert lines[-1].startswith("| graphs against the eager path, bf16 | 7 of 8")  # no math run
    # a CPU run has no graphs: no rows for them
    cpu = {**parts, "decoder_path": "static cache, no graph",
           "encoder_ms": {"eager": 400.0, "graph": None}, "graphs_against_eager": None}
    lines = tables.RENDERERS["p2_decoding_parts"](cpu)
    assert "| backbone and encoder, one image, eagerly | 400.00 ms |" in lines
    assert not [line for line in lines if "replayed" in line or "against the eager" in line]


def test_the_last_layer_is_the_highest_numbered_one():
    assert tables.last_layer({"layer 9": {}, "rollout": {}, "layer 10": {}}) == "layer 10"


def test_a_p2_speed_result_cut_short_after_its_rows_still_renders():
    # bench/p2_speed.py saves after each part: a time limit may stop it before the batched rates
    partial = {"decoder_path": "static cache, CUDA graph", "graphs_against_eager": None,
               "rows": [{"tokens": 20, "catr_loop_s": 1.0, "project_s": 0.05, "speed_up": 20.0,
                         "decoder_cached_s": 0.04, "decoder_prefix_rerun_s": 0.08}]}
    assert tables.RENDERERS["p2_speed"](partial)[2] == (
        "| 20 | 1.00 | 0.050 | **20.0x** | 0.040 | 0.080 |")
    assert tables.RENDERERS["p2_decoding_parts"](partial) == ["| measure | value |",
                                                              "| --- | ---: |"]
