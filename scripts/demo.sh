#!/usr/bin/env bash
# Generate a small demo corpus and ingest it into demo/out; then print what the manifests say.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
PY=.venv/bin/python
[ -x "$PY" ] || { echo "run: bash scripts/setup.sh" >&2; exit 1; }
rm -rf demo/corpus
$PY scripts/make_demo_corpus.py demo/corpus
$PY pipeline/ingest.py --input demo/corpus --output demo/out "$@"
$PY -m manifests demo/out
$PY -m manifests demo/out "SELECT speaker, count(*) AS segments, round(sum(duration), 1) AS seconds FROM segments WHERE kept GROUP BY 1 ORDER BY 1"
$PY -m manifests demo/out "SELECT coalesce(drop_reason, 'kept') AS outcome, count(*) AS n FROM segments GROUP BY 1"
$PY -m manifests demo/out "SELECT path, status, error FROM sources WHERE status <> 'ok'"
echo "report: demo/out/report.html (the ingest rebuilt it; python -m manifests report demo/out does too)"
