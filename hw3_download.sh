#!/usr/bin/env bash
# Download the model files into checkpoints/ (the only script of this project that downloads).
#   B_16_imagenet1k.pth  ViT-B/16 ImageNet weights (pytorch-pretrained-vit), to fine-tune from
#   catr_v3.pth          the pretrained CATR v3 captioner, used by hw3_2.sh
#   p1_vit.pt            a fine-tuned Problem 1 checkpoint, only when HW3_P1_URL is set
#   bash hw3_download.sh [--check]    (--check: verify the files present, download nothing)
# Files already present are kept. Each download goes to a temporary name and is renamed only
# after it loads with torch.load(..., weights_only=True), checked by the project's Python (the
# rule in venv.sh); a failed one leaves nothing behind. A good file's size and SHA-256 are printed.
# Variables: HW3_CKPT_DIR (destination), HW3_VIT_URL, HW3_CATR_URL, HW3_P1_URL, PYTHON.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${HW3_CKPT_DIR:-$here/checkpoints}"
vit_url="${HW3_VIT_URL:-https://github.com/lukemelas/PyTorch-Pretrained-ViT/releases/download/0.0.2/B_16_imagenet1k.pth}"
catr_url="${HW3_CATR_URL:-https://github.com/saahiluppal/catr/releases/download/0.2/weight493084032.pth}"
check_only=0
case "${1:-}" in
    "") ;;
    --check) check_only=1 ;;
    *) echo "usage: bash hw3_download.sh [--check]" >&2; exit 2 ;;
esac
. "$here/venv.sh"
python="$(hw3_python)"
part=""  # the download in progress, removed whatever happens
trap 'rm -f "$part"' EXIT

describe() {  # describe FILE: its size and SHA-256
    echo "$1: $(stat -c %s "$1") bytes, sha256 $(sha256sum "$1" | cut -d' ' -f1)"
}

loads() {  # loads FILE: a torch file that loads with weights_only=True (else the reason on stderr)
    local reason
    reason="$(PYTHONPATH="$here" "$python" -m hw3core.checkpoints "$1" 2>&1 >/dev/null)" && return 0
    if ! "$python" -c "import torch" >/dev/null 2>&1; then  # asked only then: a start costs seconds
        echo "error: torch is not importable with $python (activate the project's venv, or set PYTHON)" >&2
        exit 2
    fi
    echo "$reason" >&2
    return 1
}

fetch() {  # fetch NAME URL
    local target="$dest/$1" url="$2" tmp
    if [ "$check_only" = 1 ]; then
        if [ ! -s "$target" ]; then
            echo "missing $target" >&2
            return 1
        fi
        loads "$target" || return 1
        describe "$target"
        return 0
    fi
    if [ -s "$target" ]; then
        echo "have $target"
        return 0
    fi
    mkdir -p "$dest" || return 1
    tmp="$(mktemp "$dest/.$1.XXXXXX.part")" || return 1
    part="$tmp"
    echo "downloading $url -> $target"
    if ! wget -q --tries=3 --timeout=60 -O "$tmp" "$url"; then
        rm -f "$tmp"
        echo "error: could not download $url; download it by hand and save it as $target" >&2
        return 1
    fi
    if ! loads "$tmp"; then
        rm -f "$tmp"
        echo "error: $url is not a loadable checkpoint; download it by hand and save it as $target" >&2
        return 1
    fi
    chmod "$(printf '%o' $((0666 & ~$(umask))))" "$tmp"  # mktemp makes 0600 files
    mv "$tmp" "$target" && describe "$target"
}

status=0
fetch B_16_imagenet1k.pth "$vit_url" || status=1
fetch catr_v3.pth "$catr_url" || status=1
if [ -n "${HW3_P1_URL:-}" ] || [ -s "$dest/p1_vit.pt" ]; then
    fetch p1_vit.pt "${HW3_P1_URL:-}" || status=1
fi
exit "$status"
