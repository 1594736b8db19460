"""report/build.py: a PDF whose numbers are the runs' own, "not run" where inputs are missing."""
import json
import shutil

import numpy as np
from pypdf import PdfReader

from p2.data import preprocess
from p2.decode import caption_images
from p2.model import save_captioner
from report import build
from tests.conftest import run_entry_point, run_history
from tests.p2.p2_samples import sample_photos, small_model

SECTIONS = ("Problem 1-1: validation accuracy", "Problem 1-2: cosine similarity of the position",
            "Problem 1-3: what the last layer's [CLS] token attends to",
            "Problem 2-2: a caption and where each word looked", "Measurements (bench/results)")


def pdf_text(path):
    reader = PdfReader(path)
    return reader, " ".join(" ".join(page.extract_text().split()) for page in reader.pages)


def test_a_report_from_runs_holds_their_numbers_and_every_section(trained_tiny, shapes_data,
                                                                  tmp_path, capsys):
    # the final run: its best epoch is not its last
    second = tmp_path / "second_run"
    shutil.copytree(trained_tiny, second)
    history = run_history(trained_tiny)
    history = [dict(history[-1], epoch=epoch, val_acc=accuracy)
               for epoch, accuracy in enumerate([0.5625, 0.8125, 0.4375], start=1)]
    (second / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    save_captioner(small_model(end_bias=50.0), tmp_path / "p2.pt")
    (tmp_path / "photos").mkdir()
    sample_photos()["wide"].save(tmp_path / "photos" / "cat.png")
    image = sorted(shapes_data[1].glob("*.png"))[0]
    status, out, err = run_entry_point(build.main, [
        "--out", tmp_path / "report.pdf", "--p1-runs", trained_tiny, second,
        "--final", tmp_path / "photos" / ".." / "second_run",  # the same run, spelt otherwise
        "--p1-images", image, "--p2-checkpoint", tmp_path / "p2.pt",
        "--p2-images", tmp_path / "photos", "--data-note", "fixture runs"], capsys)
    assert status == 0, err
    reader, text = pdf_text(tmp_path / "report.pdf")
    for title in SECTIONS:
        assert title in text
    assert "Not run" not in text
    assert "Final result: 81.25% validation accuracy (run second_run, best.pt)" in text
    assert text.count("second_run (final)") == 1 and "81.25% (epoch 2) 43.75% 3 of" in text
    # the inputs page: each run once, the final run's checkpoint drawing the P1 figures
    assert f"Problem 1 runs {trained_tiny}, {second} final run {second} " in text
    assert f"Problem 1 checkpoint {second / 'best.pt'}" in text
    assert f"Problem 2 images {tmp_path / 'photos'}" in text
    assert trained_tiny.name in text
    confusion = json.loads((trained_tiny / "best_confusion.json").read_text())
    right = confusion["counts"][0][0]
    assert f"From best_confusion.json: the validation images of epoch {confusion['epoch']}" in text
    assert f"{right / sum(confusion['counts'][0]):.1%}" in text
    assert "The true class, where shown, is read from the file's name" in text
    # each word's share of its attention on its highest cells, in the last decoder layer
    photo = preprocess(sample_photos()["wide"], 299)
    shares = []
    for layer in (-1, 0):
        (result,) = caption_images(small_model(end_bias=50.0), [photo], attention_layer=layer)
        heat = np.sort(result.attention[0].ravel())[::-1] / result.attention[0].sum()
        shares.append(f"{heat[0]:.1%} {heat[:3].sum():.1%} {heat.size}")
    assert shares[0] != shares[1]
    assert "cat.png" in text and f"highest cell three highest cells cells <end> {shares[0]}" in text
    assert "sweep_learned.json" in text  # the repository's benchmark results
    assert len(reader.pages) >= 7 and f"({len(reader.pages)} pages)" in out


def test_missing_inputs_give_not_run_pages_with_the_commands(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    stopped = tmp_path / "stopped_run"  # a run stopped in its first epoch
    stopped.mkdir()
    (stopped / "args.json").write_text("{}")
    (stopped / "metrics.jsonl").write_text("")
    status, out, err = run_entry_point(build.main, [
        "--out", tmp_path / "report.pdf", "--p1-runs", tmp_path / "absent_run", stopped,
        "--bench", tmp_path / "empty"], capsys)
    assert status == 0, err
    reader, text = pdf_text(tmp_path / "report.pdf")
    assert len(reader.pages) == 1 + len(SECTIONS)  # the inputs page, then one page a section
    assert text.count("Not run.") == len(SECTIONS)
    assert ("python p1/train.py --train-dir p1_data/train --val-dir p1_data/val --out runs/vit"
            in text)
    assert "bash hw3_download.sh" in text and "python -m bench.sweep_learned" in text
    assert "absent_run: no args.json or metrics.jsonl there; left out." in text
    assert "stopped_run: no epoch finished yet (metrics.jsonl is empty); left out." in text


def test_an_unwritable_report_path_is_one_line_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    status, _, err = run_entry_point(build.main, ["--out", tmp_path / "file" / "r.pdf"], capsys)
    assert status == 2 and err.startswith("error: cannot write") and err.count("\n") == 1


class TextOnly:
    """A Report that keeps the text of each paragraph."""

    def __init__(self):
        self.texts = []

    def heading(self, *args, **kwargs):
        pass

    def table(self, *args, **kwargs):
        pass

    def text(self, line):
        self.texts.append(line)


def test_per_class_figures_say_when_they_are_not_from_best_pts_epoch(tmp_path):
    from hw3core.checkpoints import save_checkpoint
    from report.sections import _per_class

    save_checkpoint({"model": {}, "epoch": 3}, tmp_path / "best.pt")
    for epoch, says in [(3, "epoch 3, the epoch best.pt was saved from, by true class"),
                        (2, "epoch 2, not the epoch best.pt was saved from (3): the run stopped")]:
        (tmp_path / "best_confusion.json").write_text(json.dumps(
            {"epoch": epoch, "class_names": ["a", "b"], "counts": [[2, 1], [0, 3]]}))
        report = TextOnly()
        _per_class(report, tmp_path)
        assert says in report.texts[0]


def test_the_final_run_is_the_first_unless_named_and_is_listed_once(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert build.runs_and_final([first, second]) == ([first, second], first)
    assert build.runs_and_final([first, second], tmp_path / "a" / ".." / "b") == (
        [first, second], second)
    assert build.runs_and_final([first], second) == ([second, first], second)
    assert build.runs_and_final([]) == ([], None)
