"""Caption every image in a folder and write one JSON line per image.

    python p2/inference.py --checkpoint checkpoints/catr_v3.pth --images DIR --out captions.jsonl

Each line is {"file": name, "caption": text, "tokens": [101, ..., 102]}: every generated id, [CLS]
first and [SEP] last ([SEP] is missing when --max-len stopped the caption), in file-name order.
The checkpoint may be a released CATR checkpoint, a bare state dict or one of this project's.
"""
import json

from hw3core.cli import parser, run_cli
from p2.cli import add_captioning_args, load_for_captioning, require_checkpoint


def parse_args(argv=None):
    p = parser(__doc__)
    add_captioning_args(p)
    p.add_argument("--out", required=True, help="JSON-lines file to write; its folder is created")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from hw3core.files import require_writable_file, write_text_atomic
    from hw3core.images import (report_written, require_images, require_not_an_input,
                                require_some_read)

    # before seconds of importing torch, and the captioning
    paths = require_images(args.images)
    require_checkpoint(args)
    require_not_an_input(args.out, paths)
    require_writable_file(args.out)
    from p2.decode import caption_folder

    model, tokenizer = load_for_captioning(args)
    lines = [json.dumps({"file": path.name, "caption": tokenizer.decode(result.tokens),
                         "tokens": result.tokens}, ensure_ascii=False)
             for path, _, result in caption_folder(model, paths, args.batch_size, args.workers,
                                                   beam=args.beam, max_len=args.max_len)]
    require_some_read(len(lines), paths, args.images)
    write_text_atomic(args.out, "".join(line + "\n" for line in lines))
    report_written(len(lines), paths, "captions", args.out)


if __name__ == "__main__":
    run_cli(main)
