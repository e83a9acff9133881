"""Reference-based evaluation helpers: WER with text normalisation, DER from RTTM files.

Used by the tests and by ``bench/ingest_quality.py``; metrics come from maintained
packages (jiwer, pyannote.metrics).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

_TAGS = re.compile(r"<[^>]*>|\[[^\]]*\]|\{[^}]*\}")


def normalize_text(text: str) -> str:
    """Lowercase, drop bracketed tags (<unk>, [laughter]), punctuation and accents; digits
    become words (num2words is not a dependency: a small English reader covers 0-9999)."""
    t = _TAGS.sub(" ", text)
    t = unicodedata.normalize("NFKD", t)
    t = "".join(c for c in t if not unicodedata.combining(c)).lower()
    t = t.replace("%", " percent ").replace("&", " and ")
    t = re.sub(r"(\d),(\d)", r"\1\2", t)
    t = re.sub(r"\d+", lambda m: " " + number_words(int(m.group())) + " ", t)
    t = re.sub(r"[^a-z' ]+", " ", t).replace("'", "")
    return " ".join(t.split())


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    if n < 1_000_000:
        return number_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_words(n % 1000))
    return " ".join(_ONES[int(d)] for d in str(n))


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER (total edits / total reference words) of normalised texts."""
    import jiwer

    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def load_rttm(path: str | Path) -> dict:
    """uri -> pyannote Annotation."""
    from pyannote.core import Annotation, Segment

    out: dict = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        f = line.split()
        if len(f) < 8 or f[0] != "SPEAKER":
            continue
        uri, start, dur, spk = f[1], float(f[3]), float(f[4]), f[7]
        out.setdefault(uri, Annotation(uri=uri))[Segment(start, start + dur)] = spk
    return out


def load_uem(path: str | Path) -> dict:
    from pyannote.core import Segment, Timeline

    out: dict = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        f = line.split()
        if len(f) >= 4:
            out.setdefault(f[0], Timeline(uri=f[0])).add(Segment(float(f[2]), float(f[3])))
    return out


def annotation(turns: list[tuple[float, float, str]], uri: str):
    from pyannote.core import Annotation, Segment

    a = Annotation(uri=uri)
    for s, e, spk in turns:
        if e > s:
            a[Segment(s, e)] = spk
    return a


def der(references: dict, hypotheses: dict, uems: dict | None = None, collar: float = 0.0) -> dict:
    """Aggregate DER over the references' uris (pyannote.metrics), plus its components and each
    uri's DER (``per_uri``). A uri with no hypothesis counts as all missed: a recording where the
    pipeline found nothing is an error, not a gap in the figures. ``collar`` is pyannote's: the
    total width ignored around each reference boundary (0.5 = ±0.25 s)."""
    from pyannote.core import Annotation
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=collar, skip_overlap=False)
    for uri, ref in references.items():
        hyp = hypotheses.get(uri)
        metric(ref, hyp if hyp is not None else Annotation(uri=uri), uem=(uems or {}).get(uri))
    comps = {k: sum(metric.results_[i][1][k] for i in range(len(metric.results_))) for k in
             ("total", "missed detection", "false alarm", "confusion")}
    total = max(comps["total"], 1e-9)
    return {"der": abs(metric), "missed": comps["missed detection"] / total,
            "false_alarm": comps["false alarm"] / total, "confusion": comps["confusion"] / total,
            "n_files": len(metric.results_),
            "per_uri": {uri: metric.compute_metric(r) for uri, r in metric.results_}}


def has_full_transcript(row: dict) -> bool:
    """A ``../shared/speech/MANIFEST.tsv`` row whose English text reference transcribes all of
    its audio (long-form WER). Left out: RTTM-only files, raw PCM, MFA's phonetic stress clips
    (a few words for seconds of laughter or creak) and the stereo file that holds two
    recordings one after the other."""
    return (row["language"] == "en" and row["ground_truth_path"].endswith((".txt", ".lab"))
            and not row["path"].endswith(".raw")
            and "stress-test" not in row["notes"] and "STEREO" not in row["notes"])


def read_reference_text(path: str | Path) -> str:
    """A ground-truth transcript file as plain text. Lines of ``start<TAB>end<TAB>speaker<TAB>text``
    (lhotse's AMI excerpts) keep only their text."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        f = line.split("\t")
        lines.append(f[-1] if len(f) >= 4 else line)
    return " ".join(lines)


def segments_to_annotations(rows: list[dict]) -> dict:
    """segments rows (source_path, start, end, speaker) -> {uri: Annotation}, uri = file stem."""
    by_uri: dict = {}
    for r in rows:
        uri = Path(r["source_path"]).stem
        by_uri.setdefault(uri, []).append((r["start"], r["end"], r["speaker"]))
    return {u: annotation(t, u) for u, t in by_uri.items()}


def speaker_purity_consistency(reference, segments: list[tuple[float, float, str]], uem=None) -> dict:
    """Of kept segments ``(start, end, speaker)`` against a reference Annotation (seconds):

    purity: the share of the reference speech inside the segments that belongs to each
    segment's majority reference speaker (duration-weighted over segments: 1.0 = every
    segment holds one voice); consistency: the share of each reference speaker's speech
    inside the segments that carries that speaker's majority segment label (1.0 = no
    speaker split over labels). Returns the sums behind both, so recordings pool exactly.
    """
    from pyannote.core import Segment

    ref = reference.crop(uem) if uem is not None else reference
    major = total = 0.0
    by_ref: dict = {}
    for s, e, label in segments:
        per = {}
        for seg, _, spk in ref.crop(Segment(s, e), mode="intersection").itertracks(yield_label=True):
            per[spk] = per.get(spk, 0.0) + seg.duration
        if per:
            major += max(per.values())
            total += sum(per.values())
        for spk, d in per.items():
            by_ref.setdefault(spk, {}).setdefault(label, 0.0)
            by_ref[spk][label] += d
    cons_major = sum(max(v.values()) for v in by_ref.values())
    cons_total = sum(sum(v.values()) for v in by_ref.values())
    return {"purity": major / total if total else None, "consistency": cons_major / cons_total if cons_total else None,
            "purity_sums": (major, total), "consistency_sums": (cons_major, cons_total)}
