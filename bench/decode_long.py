"""Peak memory of decoding one long file (default: 60 min, 48 kHz stereo 16-bit WAV, ~660 MB).

    .venv/bin/python bench/decode_long.py [--minutes 60]

The file is built from ../shared/speech (a real recording looped). Prints decode time and
the process's peak RSS against the size of what the decoder must return (16 kHz float32 +
24 kHz int16) and the size the audio would have fully decoded at its original rate.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SPEECH = Path(os.environ.get("VOXFORGE_SPEECH", REPO.parent / "shared" / "speech"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60.0)
    args = ap.parse_args()
    src, sr = sf.read(SPEECH / "pyannote-audio/tests/data/dev00.wav", dtype="float32")
    import soxr

    src = soxr.resample(src, sr, 48_000)
    n = int(args.minutes * 60 * 48_000)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "long.wav"
        with sf.SoundFile(path, "w", 48_000, 2, subtype="PCM_16") as f:
            written = 0
            while written < n:
                k = min(len(src), n - written)
                f.write(np.stack([src[:k], 0.5 * src[:k]], 1))
                written += k
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        from pipeline.decode import Decoder

        t = time.time()
        a = Decoder()(str(path))
        el = time.time() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = a.audio16.nbytes + a.audio24.nbytes
        full = n * 2 * 4
        print(f"{args.minutes:.0f} min 48 kHz stereo WAV ({path.stat().st_size / 2**20:.0f} MiB): decoded in {el:.1f} s "
              f"({a.duration / el:.0f}x real time)")
        print(f"peak RSS {peak / 2**20:.0f} MiB (before decode {base / 2**20:.0f} MiB); outputs {out / 2**20:.0f} MiB; "
              f"the whole file as float32 at 48 kHz stereo would be {full / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
