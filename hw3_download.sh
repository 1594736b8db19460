#!/usr/bin/env bash
# Download the model files into checkpoints/ (the only script of this project that downloads).
#   B_16_imagenet1k.pth  ViT-B/16 ImageNet weights (pytorch-pretrained-vit), to fine-tune from
#   catr_v3.pth          the pretrained CATR v3 captioner, used by hw3_2.sh
#   p1_vit.pt            a fine-tuned Problem 1 checkpoint, only when HW3_P1_URL is set
# Files already present are kept. Each download goes to a temporary name and is renamed only
# after it loads with torch.load(..., weights_only=True); a failed one leaves nothing behind.
# Variables: HW3_CKPT_DIR (destination), HW3_VIT_URL, HW3_CATR_URL, HW3_P1_URL.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${HW3_CKPT_DIR:-$here/checkpoints}"
vit_url="${HW3_VIT_URL:-https://github.com/lukemelas/PyTorch-Pretrained-ViT/releases/download/0.0.2/B_16_imagenet1k.pth}"
catr_url="${HW3_CATR_URL:-https://github.com/saahiluppal/catr/releases/download/0.2/weight493084032.pth}"
mkdir -p "$dest" || exit 1
. "$here/venv.sh"  # checks downloads with $PYTHON, else .venv beside this script, else python3
python="$(hw3_python)"

fetch() {  # fetch NAME URL
    local target="$dest/$1" url="$2" tmp
    if [ -s "$target" ]; then
        echo "have $target"
        return 0
    fi
    tmp="$(mktemp "$dest/.$1.XXXXXX.part")" || return 1
    echo "downloading $url -> $target"
    if ! wget -q --tries=3 --timeout=60 -O "$tmp" "$url"; then
        rm -f "$tmp"
        echo "error: could not download $url; download it by hand and save it as $target" >&2
        return 1
    fi
    if ! PYTHONPATH="$here" "$python" -m hw3core.checkpoints "$tmp" >/dev/null 2>&1; then
        rm -f "$tmp"
        echo "error: $url did not give a loadable checkpoint; download it by hand and save it as $target" >&2
        return 1
    fi
    mv "$tmp" "$target"
}

status=0
fetch B_16_imagenet1k.pth "$vit_url" || status=1
fetch catr_v3.pth "$catr_url" || status=1
if [ -n "${HW3_P1_URL:-}" ]; then
    fetch p1_vit.pt "$HW3_P1_URL" || status=1
fi
exit "$status"
