#!/usr/bin/env bash
# Wheels the GPU benchmark kit (bench/gpu_check.py) needs that a bare PyTorch image lacks, for
# CPython 3.12 / manylinux x86-64, into the git-ignored .whl/ (docs/gpu.md). The kit installs them
# there with:  python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#
# What the kit's code paths import beyond torch, numpy, scipy, pyarrow, safetensors, pytest (all in
# the reference image, /work/.library/device/KINDS.md):
#   soundfile (+ cffi, pycparser)  FLAC in the audio shards (codec/audio_stream.py, manifests/shards.py)
#   soxr                           resampling (codec/eval.py, codec/audio_stream.py)
#   pystoi                         ESTOI (codec/eval.py)
#   pesq                           PESQ (codec/eval.py); PyPI has no wheel, only an sdist: built here
#                                  with a local CPython 3.12 ($PY312, default python3.12) when there is one
# Not carried (bench/gpu_check.py records why): faster-whisper + ctranslate2 + the tiny.en model
# (WER of decoded speech, the ASR part): ~40 MB of wheels for CUDA 12 plus a 75 MB model, over the
# 64 MiB bundle; jiwer is only needed for that WER.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(${PIP:-.venv/bin/python -m pip})
# A CPython 3.12 to build pesq with: $PY312, else python3.12 if it runs (a pyenv shim may not), else pyenv's.
PY312=${PY312:-}
if [ -z "$PY312" ]; then
    for c in python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then PY312=$c; break; fi
    done
fi
DEST=.whl
mkdir -p "$DEST"
PLAT=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do PLAT+=(--platform "$p"); done
# Exact versions: those of requirements.lock (one version each: two of a name stop the install).
for spec in soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 pystoi==0.4.1; do
    name=${spec%%==*}
    if ls "$DEST"/"${name}"-"${spec##*==}"-*.whl >/dev/null 2>&1; then continue; fi
    "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLAT[@]}" -d "$DEST" "$spec"
done
if ! ls "$DEST"/pesq-0.0.4-cp312-*.whl >/dev/null 2>&1; then
    if [ -n "$PY312" ]; then
        # linux_x86_64 wheel built against this machine's glibc (2.36 here; the image has 2.39)
        "$PY312" -m pip wheel -q --no-deps -w "$DEST" pesq==0.0.4 \
            || echo "gpu_wheels: building pesq failed; the kit will record PESQ as skipped" >&2
    else
        echo "gpu_wheels: no CPython 3.12 here (set PY312) to build pesq; the kit will record PESQ as skipped" >&2
    fi
fi
ls -l "$DEST"/*.whl | awk '{print $5, $9}'
du -cb "$DEST"/*.whl | awk 'END {printf "wheels: %d files, %.2f MiB\n", NR - 1, $1 / 1048576}'
