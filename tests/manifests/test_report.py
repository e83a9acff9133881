"""The HTML corpus report: what it shows, its audio, its size cap, and the page in a real Chromium.

Fast tests build a small output with the real shard writer from real speech (kept segments in a
shard, dropped ones left in their source files); the slow one opens the report that the
end-to-end ingest (tests/pipeline/e2e.py) wrote itself.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from manifests.report import ReportConfig, ReportError, build_report
from manifests.shards import TokenSample
from manifests.store import write_part
from manifests.tokens import commit_token_shard
from manifests.views import connect
from pipeline.config import IngestConfig
from pipeline.writer import ShardWriter
from tests.conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (scripts/setup.sh installs it)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
FILES = ["mfa/tests/data/wav/mfa_affectation.flac",  # 6.4 s, 16 kHz
         "pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav",  # 7.1 s
         "deepspeech/data/smoke_test/LDC93S1.wav"]  # 2.9 s
FIGURES = {"durations", "speakers", "languages", "drop_reasons", "quality_snr_rate_logprob", "quality_nsp_cr", "sources"}


def _segment(sid: str, i: int, path: str, start: float, end: float, speaker: str, kept: bool,
             reason: str | None, snr: float) -> dict:
    return {"key": f"{sid}_{i:05d}", "source_id": sid, "source_path": path, "start": start, "end": end,
            "duration": end - start, "sample_rate": 24_000, "speaker": f"{sid}:{speaker}", "language": "en",
            "language_prob": 1.0, "text": f"words of segment {i}", "words": [],
            "asr": {"model": "tiny.en", "avg_logprob": -0.3, "no_speech_prob": 0.1, "compression_ratio": 1.2},
            "quality": {"snr_db": snr, "clipping_ratio": 0.0, "speech_rate_cps": 14.0, "overlap_ratio": 0.0},
            "pipeline_version": "0.1.0", "kept": kept, "drop_reason": reason}


def make_output(out: Path, speech: Path, run_id: str = "run-a", files: list[str] = FILES) -> dict:
    """An output with the real writer: per source, 2 kept segments (in a shard) and 2 dropped ones."""
    cfg = IngestConfig(inputs=[str(speech)], output=str(out), min_snr_db=7.0)
    write_part(out, "runs", f"ingest-{run_id}", [{"run_id": run_id, "job": "ingest", "config": cfg.to_json(),
                                                   "versions": json.dumps({"voxforge": "0.1.0"}), "stats": "{}"}])
    w = ShardWriter(out, run_id, max_samples=4)
    segs = {}
    for n, rel in enumerate(files):
        path = str(speech / rel)
        audio, sr = sf.read(path, dtype="float32")
        a24 = soxr.resample(audio, sr, 24_000)
        dur = len(audio) / sr
        sid = hashlib.sha256(f"{run_id}/{rel}".encode()).hexdigest()[:16]
        rows = [_segment(sid, 0, path, 0.0, dur / 2, "S0", True, None, 40.0),
                _segment(sid, 1, path, dur / 2, dur, "S1" if n == 0 else "S0", True, None, 35.0),
                _segment(sid, 2, path, 0.2, 0.6, "S0", False, "too_short", 30.0),
                _segment(sid, 3, path, 0.5, dur - 0.5, "S0", False, "low_snr", 3.0)]
        samples = []
        for r in rows[:2]:
            pcm = (np.clip(a24[int(r["start"] * 24_000):int(r["end"] * 24_000)], -1, 1) * 32767).astype(np.int16)
            buf = io.BytesIO()
            sf.write(buf, pcm, 24_000, format="FLAC", subtype="PCM_16")
            samples.append({"__key__": r["key"], "flac": buf.getvalue(), "json": json.dumps(r).encode()})
        src = {"source_id": sid, "path": path, "bytes": Path(path).stat().st_size, "duration": dur,
               "sample_rate": sr, "channels": 1, "codec": "x", "status": "ok", "error": None, "language": "en",
               "language_prob": 1.0, "n_segments": 4, "n_kept": 2, "kept_duration": dur}
        w.add_source(src, rows, samples)
        segs.update({r["key"]: r for r in rows})
    w.add_source({"source_id": None, "path": str(out / "broken.wav"), "status": "rejected",
                  "error": f"not_audio: {out / 'broken.wav'}: not decodable"}, [], [])
    w.close()
    return segs


@pytest.fixture(scope="module")
def small(tmp_path_factory, speech_dir) -> dict:
    out = tmp_path_factory.mktemp("report") / "out"
    return {"out": out, "segments": make_output(out, speech_dir)}


def clips_of(page: str) -> dict[str, tuple[str, bytes]]:
    """key -> (group, audio bytes) of each embedded clip."""
    return {m.group(1): (m.group(2), base64.b64decode(m.group(3))) for m in re.finditer(
        r'<audio [^>]*data-key="([^"]+)" data-group="([^"]+)" src="data:audio/(?:ogg|flac);base64,([^"]+)"', page)}


def test_the_page_shows_the_manifests_and_embeds_decodable_clips(small, tmp_path):
    r = build_report(small["out"], tmp_path / "r.html")
    page = r.path.read_text()
    assert set(re.findall(r'data-plot="([^"]+)"', page)) == FIGURES and r.figures == len(FIGURES)
    assert page.count("<svg") == len(FIGURES)
    # self-contained: nothing to fetch (the SVG namespace URI is a name, never loaded)
    for bad in ("<script", "<link", "<img", 'src="http', "href=\"http", "@import"):
        assert bad not in page, bad
    assert not re.search(r"url\((?!#)", page)  # only references to ids inside the page
    n_kept = connect(small["out"]).execute("SELECT count(*) FROM segments WHERE kept").fetchone()[0]
    assert n_kept == 6 and f"<td>segments_kept</td><td>{n_kept}</td>" in page
    assert "min_snr_db = 7" in page  # the thresholds come from the run's config, not the defaults
    assert "<b>3 flagged</b>" in page  # speakers without two kept segments of >= 3 s
    assert "not_audio: " in page and "sources not ok" in page
    clips = clips_of(page)
    groups = {g for g, _ in clips.values()}
    assert groups == {"kept", "too_short", "low_snr"}
    assert r.clips == len(clips) == 6 + 3 + 3 and r.clips_left_out == 0 and r.clips_unavailable == 0
    for key, (_, data) in clips.items():
        audio, sr = sf.read(io.BytesIO(data), dtype="float32")
        seg = small["segments"][key]
        assert sr == 24_000
        assert abs(len(audio) / sr - seg["duration"]) < 0.08, key
        # the clip is that segment's audio: the same level as its region of the source (Vorbis is lossy)
        src, src_sr = sf.read(seg["source_path"], dtype="float32")
        region = src[int(seg["start"] * src_sr):int(seg["end"] * src_sr)]
        ratio = np.sqrt(np.mean(audio ** 2) / np.mean(region ** 2))
        assert 0.7 < ratio < 1.4, (key, ratio)


def test_the_size_cap_leaves_clips_out_and_says_how_many(small, tmp_path):
    bare = build_report(small["out"], tmp_path / "bare.html", ReportConfig(listen_kept=0, listen_per_reason=0))
    cap = bare.bytes + 60_000  # the figures, and room for a few clips
    r = build_report(small["out"], tmp_path / "capped.html", ReportConfig(max_bytes=cap))
    assert r.bytes <= cap
    assert r.clips >= 1 and r.clips_left_out >= 1 and r.clips + r.clips_left_out == 12
    page = r.path.read_text()
    assert f"{r.clips_left_out} left out by the size cap" in page
    assert page.count("audio left out: the page is capped") == r.clips_left_out
    with pytest.raises(ReportError, match="max_bytes"):
        ReportConfig(max_bytes=10)


def test_the_report_is_rebuilt_from_the_manifests_not_appended(tmp_path, speech_dir):
    out = tmp_path / "out"
    make_output(out, speech_dir, files=FILES[:1])
    first = build_report(out)
    assert first.path == out / "report.html"
    make_output(out, speech_dir, run_id="run-b", files=FILES[1:2])  # a second run adds a source
    second = build_report(out)
    page = second.path.read_text()
    assert page.count("<!DOCTYPE html>") == 1
    assert "<td>segments_kept</td><td>4</td>" in page and "run-b" in page
    assert second.bytes < 2 * first.bytes


def test_a_fresh_output_without_segments_still_gets_a_page(tmp_path):
    out = tmp_path / "out"
    w = ShardWriter(out, "run-empty")
    w.add_source({"source_id": None, "path": "/x/empty.wav", "status": "rejected", "error": "empty_file: /x/empty.wav: 0 bytes"},
                 [], [])
    w.close()
    r = build_report(out)
    page = r.path.read_text()
    assert r.figures == len(FIGURES) and r.clips == 0
    assert "empty_file: /x/empty.wav" in page and "<td>segments_kept</td><td>0</td>" in page


def test_the_tokens_section_shows_codebook_usage_and_failures(small, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(small["out"], out)
    con = connect(out)
    keys = [k for (k,) in con.execute("SELECT key FROM segments WHERE kept AND shard = '000000' ORDER BY key").fetchall()]
    rng = np.random.default_rng(0)
    # 256 codes used equally often: perplexity 256, 3.1 % of 8192
    samples = [TokenSample(k, (np.arange(512) % 256).astype(np.int16), rng.integers(0, 21, (512, 36), dtype=np.uint8),
                           {"key": k}) for k in keys[:-1]]
    commit_token_shard(out, "tiny-0123456789ab", "000000", samples,
                       [{"key": keys[-1], "position": len(keys) - 1, "error": "encode_failed: out of memory",
                         "duration": 1.0}], frame_rate=12.5, sample_rate=24_000,
                       n_samples=[512 * 1920] * len(samples), run_id="tok-1")
    r = build_report(out)
    page = r.path.read_text()
    assert 'data-plot="codebook_tiny-0123456789ab"' in page and r.figures == len(FIGURES) + 1
    assert "<b>perplexity 256</b> of 8192" in page and "<b>3.1 %</b> of the codes used (256)" in page
    assert "encode_failed" in page and 'href="#tokens"' in page
    assert "report.html" not in page.split("<body>")[0]


def test_cli_writes_the_page_and_refuses_a_directory_without_manifests(small, tmp_path):
    env_run = [sys.executable, "-m", "manifests", "report"]
    p = subprocess.run([*env_run, str(small["out"]), "--output", str(tmp_path / "x.html"), "--listen-kept", "2"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "x.html").is_file() and "wrote" in p.stdout and "clips" in p.stdout
    p = subprocess.run([*env_run, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "no manifests/" in p.stderr


# --------------------------------------------------------------------------------------
# in a real browser


def open_in_chromium(page_path: Path, screenshot: Path) -> dict:
    """Open the page in Debian's Chromium (Playwright drives it; no browser download) and report what it saw."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    seen = {"console_errors": [], "requests": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: m.type == "error" and seen["console_errors"].append(m.text))
            page.on("pageerror", lambda e: seen["console_errors"].append(str(e)))
            page.on("request", lambda r: seen["requests"].append(r.url[:80]))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            # every <audio> must decode: metadata loaded, a finite positive duration, no media error
            seen["audio"] = page.evaluate("""async () => Promise.all([...document.querySelectorAll('audio')].map(
                a => new Promise(done => {
                    const report = () => done({duration: a.duration, error: a.error ? a.error.code : null});
                    if (a.readyState >= 1) return report();
                    a.addEventListener('loadedmetadata', report);
                    a.addEventListener('error', report);
                    setTimeout(report, 15000);
                    a.load();
                })))""")
            seen["plots"] = page.evaluate("""() => [...document.querySelectorAll('figure.plot')].map(f => {
                const s = f.querySelector('svg'); const b = s ? s.getBoundingClientRect() : null;
                return {name: f.dataset.plot, width: b ? b.width : 0, height: b ? b.height : 0}; })""")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return seen


def check_page_in_browser(page_path: Path, screenshot: Path, n_clips: int, figures: set[str]) -> None:
    seen = open_in_chromium(page_path, screenshot)
    print(f"\nscreenshot of {page_path}: {screenshot}")
    assert seen["console_errors"] == []
    assert all(u.startswith(("file:", "data:")) for u in seen["requests"]), seen["requests"]
    assert {p["name"] for p in seen["plots"]} >= figures
    assert all(p["width"] > 100 and p["height"] > 50 for p in seen["plots"]), seen["plots"]
    assert len(seen["audio"]) == n_clips > 0
    for a in seen["audio"]:
        assert a["error"] is None and a["duration"] is not None and 0 < a["duration"] < 1e6, a
    assert screenshot.stat().st_size > 10_000


def test_the_page_opens_in_chromium_without_errors_and_its_audio_decodes(small, tmp_path):
    r = build_report(small["out"], tmp_path / "r.html")
    check_page_in_browser(r.path, tmp_path / "report.png", r.clips, FIGURES)


@pytest.mark.slow
def test_the_ingest_writes_its_report_and_it_opens_in_chromium(e2e_ingested, tmp_path_factory):
    out = e2e_ingested["out"]
    last = e2e_ingested["stdout"].strip().splitlines()[-1]
    assert last.startswith(f"report: open {out / 'report.html'}"), last
    page = (out / "report.html").read_text()
    n_clips = page.count("<audio ")
    assert 0 < len(page.encode()) <= ReportConfig().max_bytes
    # the real corpus has overlapped speech and rejected sources: both show up
    assert 'data-group="overlap"' in page and "sources not ok" in page
    shot = tmp_path_factory.mktemp("report-screenshot") / "e2e-report.png"
    check_page_in_browser(out / "report.html", shot, n_clips, FIGURES)


def test_a_histogram_keeps_its_axis_on_the_bulk_and_counts_the_outliers():
    from manifests import plots

    fig, (ax,) = plots.figure()
    bulk = np.random.default_rng(0).normal(15, 3, 400)
    plots.histogram(ax, np.concatenate([bulk, [2e7]]), np.array([12.0, np.nan]), "speech rate",
                    [(4.0, "min_speech_rate"), (30.0, "max_speech_rate")])
    lo, hi = ax.get_xlim()
    assert lo < 4.0 and 30.0 < hi < 100  # the thresholds in view, a 2e7 chars/s outlier not
    assert "(1 off-axis, in the edge bins)" in ax.get_xlabel()
    assert plots.to_svg(fig).startswith("<svg")
