"""Build report.pdf, the homework's report, from recorded runs and the project's own code.

    python report/build.py --out report.pdf \\
        --p1-runs runs/vit runs/head_only runs/adamw \\
        --p1-images p1_data/val/26_5064.jpg p1_data/val/29_4718.jpg p1_data/val/31_4838.jpg \\
        --p2-checkpoint checkpoints/catr_v3.pth --p2-images p2_data/images

Every number and figure comes from those files: p1/train.py run folders (args.json,
metrics.jsonl, best_confusion.json, best.pt), a checkpoint and images for the attention and
position-embedding figures, a captioner and its images, and bench/results/*.json. Nothing is
typed in. A section whose inputs are missing says so and gives the command that makes them. The
discussion of what the numbers show is the student's: each section leaves a marked place for it.
"""
import os
import warnings
from datetime import date
from pathlib import Path

from hw3core.cli import at_least, parser, run_cli

ROOT = Path(__file__).resolve().parents[1]

COURSE_IMAGES = ("26_5064.jpg", "29_4718.jpg", "31_4838.jpg")


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--out", required=True, help="the PDF to write")
    p.add_argument("--title", default="HW3 report: Vision Transformer and attention in captioning")
    p.add_argument("--data-note", help="a line under the title saying what data the runs used")
    p.add_argument("--p1-runs", nargs="*", default=[], metavar="RUN_DIR",
                   help="p1/train.py --out folders; the first is the final result unless --final")
    p.add_argument("--final", help="the run folder to mark as the final result")
    p.add_argument("--p1-checkpoint", help="for the position-embedding and attention figures "
                   "(default: the final run's best.pt)")
    p.add_argument("--p1-images", nargs="*", default=[], metavar="FILE",
                   help="images for the attention figures (the course's: "
                   f"{', '.join(COURSE_IMAGES)})")
    p.add_argument("--p2-checkpoint", help="a CATR checkpoint (released or trained)")
    p.add_argument("--p2-images", help="a folder of images to caption")
    p.add_argument("--p2-max-images", type=at_least(1), default=2,
                   help="images of --p2-images shown (%(default)s)")
    p.add_argument("--bench", default=str(ROOT / "bench" / "results"),
                   help="benchmark results, *.json (%(default)s)")
    return p.parse_args(argv)


def runs_and_final(p1_runs, final=None):
    """(the run folders, the final one): ``final``, or the first run; a final run that is not
    among the runs (however its path is spelt) comes first."""
    runs = [Path(run) for run in p1_runs]
    if final is None:
        return runs, runs[0] if runs else None
    same = [run for run in runs if run.resolve() == Path(final).resolve()]
    return (runs, same[0]) if same else ([Path(final), *runs], Path(final))


def main(argv=None):
    args = parse_args(argv)
    from hw3core.files import require_writable_file
    from report.document import Report
    from report import sections

    # a word piece in a script the font lacks is drawn as a box; a warning per glyph adds nothing
    warnings.filterwarnings("ignore", message="Glyph .* missing from font")
    require_writable_file(args.out)
    runs, final = runs_and_final(args.p1_runs, args.final)
    checkpoint = args.p1_checkpoint or (str(final / "best.pt") if final else None)
    report = Report(args.title, args.data_note, inputs=[
        ("Problem 1 runs", ", ".join(map(str, runs)) or "none"),
        ("final run", str(final) if final else "none"),
        ("Problem 1 checkpoint", checkpoint or "none"),
        ("Problem 1 images", ", ".join(args.p1_images) or "none"),
        ("Problem 2 checkpoint", args.p2_checkpoint or "none"),
        ("Problem 2 images", args.p2_images or "none"),
        ("benchmark results", os.path.relpath(args.bench)),
        ("built", f"{date.today().isoformat()} by report/build.py"),
    ])
    sections.accuracy(report, runs, final)
    sections.position_embeddings(report, checkpoint)
    sections.attention(report, checkpoint, args.p1_images)
    sections.captions(report, args.p2_checkpoint, args.p2_images, args.p2_max_images)
    sections.benchmarks(report, Path(args.bench))
    pages = report.save(args.out)
    print(f"wrote {args.out} ({pages} pages)")


if __name__ == "__main__":
    run_cli(main)
