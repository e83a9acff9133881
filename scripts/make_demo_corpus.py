"""Generate a small demo corpus with espeak-ng (real speech cannot be shipped in the repo).

    python scripts/make_demo_corpus.py OUT_DIR

Writes a few mono/stereo files in several formats and rates: single-speaker read
sentences and a two-voice dialogue (for diarization), about 1.5 minutes in all.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SENTENCES = [
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls. The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck. The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us. A large size in stockings is hard to sell.",
]
DIALOGUE = [
    ("en-us+m3", "Good morning. Did you finish the report for the meeting today?"),
    ("en-us+f4", "Almost. I still need to check the numbers in the last table."),
    ("en-us+m3", "Fine. Send it to me before noon, and I will read it over lunch."),
    ("en-us+f4", "I will. Should I also include the notes from last week?"),
    ("en-us+m3", "Yes please, that would help the others who missed it."),
]


def say(text: str, voice: str, speed: int = 150) -> tuple[np.ndarray, int]:
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", f.name, text], check=True)
        x, sr = sf.read(f.name, dtype="float32")
    return x, sr


def main(out: Path) -> None:
    if not shutil.which("espeak-ng"):
        sys.exit("espeak-ng is not installed (bash scripts/setup.sh installs it)")
    out.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(SENTENCES):
        x, sr = say(text, "en-us" if i % 2 == 0 else "en-gb")
        x = np.concatenate([np.zeros(sr // 2, np.float32), x, np.zeros(sr // 2, np.float32)])
        if i == 0:
            sf.write(out / "read_000.flac", x, sr)
        elif i == 1:  # 44.1 kHz stereo wav
            y = soxr.resample(x, sr, 44_100)
            sf.write(out / "read_001.wav", np.stack([y, 0.8 * y], 1), 44_100, subtype="PCM_16")
        elif i == 2:
            sf.write(out / "read_002.ogg", soxr.resample(x, sr, 48_000), 48_000, format="OGG", subtype="VORBIS")
        else:
            sf.write(out / f"read_{i:03d}.wav", x, sr, subtype="FLOAT")
    parts = []
    for voice, text in DIALOGUE:
        x, sr = say(text, voice, 160)
        parts += [x, np.zeros(int(0.4 * sr), np.float32)]
    sf.write(out / "dialogue.wav", np.concatenate(parts), sr, subtype="PCM_16")
    (out / "broken.wav").write_bytes(b"RIFF not really a wav file")  # shows a rejection
    print(f"demo corpus: {len(list(out.iterdir()))} files in {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
