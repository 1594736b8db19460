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
check_only=0
case "${1:-}" in
    "") ;;
    --check) check_only=1 ;;
    *) echo "usage: bash hw3_download.sh [--check]" >&2; exit 2 ;;
esac
. "$here/venv.sh"
python="$(hw3_python)"

names=(B_16_imagenet1k.pth catr_v3.pth)
urls=("${HW3_VIT_URL:-https://github.com/lukemelas/PyTorch-Pretrained-ViT/releases/download/0.0.2/B_16_imagenet1k.pth}"
      "${HW3_CATR_URL:-https://github.com/saahiluppal/catr/releases/download/0.2/weight493084032.pth}")
if [ -n "${HW3_P1_URL:-}" ] || [ -s "$dest/p1_vit.pt" ]; then
    names+=(p1_vit.pt)
    urls+=("${HW3_P1_URL:-}")
fi

parts=()  # downloads in progress or unchecked, removed whatever happens
trap 'rm -f "${parts[@]+"${parts[@]}"}"' EXIT

describe() {  # describe FILE: its size and SHA-256
    echo "$1: $(stat -c %s "$1") bytes, sha256 $(sha256sum "$1" | cut -d' ' -f1)"
}

no_torch() {
    echo "error: torch is not importable with $python (activate the project's venv, or set PYTHON)" >&2
    exit 2
}

status=0
files=()    # what to check: the downloads, or with --check the files present
targets=()  # where each goes
sources=()  # and where it came from
for i in "${!names[@]}"; do
    target="$dest/${names[$i]}" url="${urls[$i]}"
    if [ "$check_only" = 1 ]; then
        if [ ! -s "$target" ]; then
            echo "missing $target" >&2
            status=1
            continue
        fi
        files+=("$target")
    elif [ -s "$target" ]; then
        echo "have $target"
        continue
    else
        # before hundreds of megabytes that could not be checked; finding torch, not importing
        # it, takes a moment (the check below tells an import that fails)
        if [ "${#parts[@]}" = 0 ] && ! "$python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)" >/dev/null 2>&1; then
            no_torch
        fi
        mkdir -p "$dest" && tmp="$(mktemp "$dest/.${names[$i]}.XXXXXX.part")" || { status=1; continue; }
        parts+=("$tmp")
        echo "downloading $url -> $target"
        if ! wget -q --tries=3 --timeout=60 -O "$tmp" "$url"; then
            echo "error: could not download $url; download it by hand and save it as $target" >&2
            status=1
            continue
        fi
        files+=("$tmp")
    fi
    targets+=("$target")
    sources+=("$url")
done

if [ "${#files[@]}" -gt 0 ]; then
    # one Python start for all the files (each start costs seconds): a line per file, "ok" or
    # "bad: why"
    mapfile -t verdicts < <("$python" -m hw3core.checkpoints "${files[@]}" 2>/dev/null)
    if [ "${#verdicts[@]}" -ne "${#files[@]}" ]; then
        if ! "$python" -c "import torch" >/dev/null 2>&1; then
            no_torch
        else
            echo "error: $python could not check the files; run: PYTHONPATH=$here $python -m hw3core.checkpoints ${files[*]}" >&2
        fi
        exit 2
    fi
    for i in "${!files[@]}"; do
        if [ "${verdicts[$i]}" != ok ]; then
            echo "${verdicts[$i]#bad: }" >&2
            if [ "$check_only" = 0 ]; then
                echo "error: ${sources[$i]} is not a loadable checkpoint; download it by hand and save it as ${targets[$i]}" >&2
            fi
            status=1
        elif [ "$check_only" = 1 ]; then
            describe "${targets[$i]}"
        else
            chmod "$(printf '%o' $((0666 & ~$(umask))))" "${files[$i]}"  # mktemp makes 0600 files
            mv "${files[$i]}" "${targets[$i]}" && describe "${targets[$i]}" || status=1
        fi
    done
fi
exit "$status"
