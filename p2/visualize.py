"""Draw, for every image in a folder, its caption and where each generated word piece looked.

    python p2/visualize.py --checkpoint checkpoints/catr_v3.pth --images DIR --out OUT_DIR

OUT/<stem>.png: the caption as the title; the image (resized as the model saw it) titled <start>;
then one panel per generated token with the decoder's cross-attention for that token laid over
the image, each map cell on the pixels it was computed from; the last panel is <end> unless
--max-len stopped the caption. --heads all adds one column per head beside the mean.
--save-npy also writes OUT/<stem>.npy: float32 (tokens, h, w), or (tokens, heads, h, w) with
--heads all; row k is the attention that produced generated token k and sums to 1.
"""

from hw3core.cli import at_least, parser, run_cli
from p2.cli import add_captioning_args, load_for_captioning, require_checkpoint

# torch, matplotlib and what needs them (p2.figures too) are imported inside the functions that
# use them, not here: --help and argument errors then answer at once instead of after seconds.


# A figure takes a core 0.6 to 1.1 s (12 to 20 word pieces over a 640 x 480 photo, on a 2-core
# AMD EPYC) and a drawing process about 120 MB; a GPU
# captions a hundred images in well under a second, so beside it the drawing sets the pace
MOST_DRAW_WORKERS = 16


def parse_args(argv=None):
    p = parser(__doc__)
    add_captioning_args(p)
    p.add_argument("--out", required=True, help="folder for <stem>.png (created)")
    p.add_argument("--layer", type=int, default=-1,
                   help="decoder layer whose cross-attention is shown: 0 the first, -1 the last "
                   "(%(default)s), as p1/visualize.py counts blocks")
    p.add_argument("--heads", choices=("mean", "all"), default="mean",
                   help="the mean over heads, or each head as well (%(default)s)")
    p.add_argument("--save-npy", action="store_true", help="also write the maps as <stem>.npy")
    p.add_argument("--draw-workers", type=at_least(0),
                   help="processes drawing figures while the model captions (default: none on "
                   "a CPU, whose cores caption; beside a GPU one per core that this process "
                   f"and the --workers leave, at most {MOST_DRAW_WORKERS}; never more than the "
                   "cores less one)")
    return p.parse_args(argv)


def write_figure(job):
    """Draw and save one image's figure (and .npy); True, or None after naming the image on
    stderr if anything fails. A job is a plain tuple, so that a drawing process can take it."""
    from hw3core.images import or_skip

    return or_skip(job[0], lambda: _write_figure(*job))


def _write_figure(path, out, image, caption, pieces, attention, per_head, stride, source,
                  write_npy):
    from hw3core.figures import save_figure
    from hw3core.files import save_npy
    from p2.figures import caption_figure

    save_figure(caption_figure(image, caption, pieces, attention, per_head, stride, source),
                out / f"{path.stem}.png")
    if write_npy:
        save_npy(attention, out / f"{path.stem}.npy")
    return True


def main(argv=None):
    args = parse_args(argv)
    import multiprocessing
    import sys
    import warnings

    from hw3core.files import require_writable_folder
    from hw3core.images import (report_written, require_images, require_outputs_apart,
                                require_some_read)

    # before seconds of importing torch, and the captioning
    paths = require_images(args.images)
    require_checkpoint(args)
    require_outputs_apart(paths, args.out)
    out = require_writable_folder(args.out)
    from hw3core.runtime import pick_device, share_cores, usable_cores
    from p2.decode import caption_folder, check_decoding_options
    from p2.figures import maps_source
    from p2.tokenizer import END_ID

    # a word piece in a script the font lacks is drawn as boxes; one warning per glyph adds nothing
    warnings.filterwarnings("ignore", message="Glyph .* missing from font")
    device = pick_device(args.device)
    readers = share_cores(args.workers, device)  # the processes reading the images
    drawers = args.draw_workers
    if drawers is None:  # the cores the readers and this process leave
        drawers = 0 if device.type == "cpu" else min(MOST_DRAW_WORKERS,
                                                     usable_cores() - 1 - readers)
    if drawers > usable_cores() - 1:
        if args.draw_workers is not None:  # said as share_cores says it of --workers
            print(f"note: {usable_cores()} core(s) here: {usable_cores() - 1} drawing "
                  f"process(es) instead of {drawers}", file=sys.stderr)
        drawers = usable_cores() - 1
    # started before the model loads: the drawing processes never hold a copy of it or of CUDA
    pool = multiprocessing.get_context("fork").Pool(drawers) if drawers > 0 else None
    try:
        model, tokenizer = load_for_captioning(args)
        per_head = args.heads == "all"
        # a --layer out of range is refused before any image is read
        layer = check_decoding_options(model.config, args.max_len, args.beam, args.layer)
        source = maps_source(layer, model.config["dec_layers"], model.config["nheads"], per_head)
        done, pending = [], []
        for path, image, result in caption_folder(
                model, paths, args.batch_size, readers, beam=args.beam,
                max_len=args.max_len, attention_layer=args.layer, per_head=per_head):
            caption = tokenizer.decode(result.tokens)
            if result.tokens[-1] != END_ID:  # no <end> panel either: say why the caption stops
                caption += f" ... (cut at --max-len {args.max_len})"
            job = (path, out, image, caption,
                   tokenizer.pieces(result.tokens[1:]), result.attention, per_head,
                   model.stride, source, args.save_npy)
            if pool is None:
                done.append(write_figure(job))
                continue
            pending.append(pool.apply_async(write_figure, (job,)))
            while len(pending) > 4 * drawers:  # images waiting to be drawn stay few
                done.append(pending.pop(0).get())
        done += [result.get() for result in pending]
    finally:
        if pool is not None:
            pool.terminate()
    written = sum(bool(d) for d in done)
    require_some_read(written, paths, args.images)
    report_written(written, paths, "figure(s)", out)


if __name__ == "__main__":
    run_cli(main)
