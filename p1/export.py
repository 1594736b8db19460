"""Export a train.py checkpoint as a bare state dict for other tools.

    python p1/export.py --checkpoint runs/vit/best.pt --out vit_ppvit.pth            # ppvit keys
    python p1/export.py --checkpoint runs/vit/best.pt --out vit_timm.pth --format timm

A ppvit export loads into pytorch_pretrained_vit.ViT('B_16_imagenet1k', num_classes=N,
image_size=S) with the checkpoint's class count N and input size S.
"""
import sys

from hw3core.cli import parser, run_cli


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=("ppvit", "timm"), default="ppvit",
                   help="pytorch-pretrained-vit keys (default) or timm keys")
    args = p.parse_args(argv)
    from hw3core.images import require_not_an_input

    # the bare state dict would replace the checkpoint and lose its class names for good
    require_not_an_input(args.out, [args.checkpoint], "the --checkpoint")
    from hw3core.checkpoints import save_checkpoint
    from p1.model import load_classifier, timm_to_ppvit

    model, _, class_names = load_classifier(args.checkpoint)
    state_dict = model.state_dict()
    if args.format == "ppvit":
        state_dict = timm_to_ppvit(state_dict)
    save_checkpoint(state_dict, args.out)
    size = tuple(model.patch_embed.img_size)
    print(f"wrote {args.out}: {args.format} keys, {len(class_names)} classes, input {size}",
          file=sys.stderr)
    if size[0] != size[1]:
        print(f"note: a bare state dict does not record a non-square input: load it with "
              f"image_size={size}; this project's scripts read {args.checkpoint} instead",
              file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
