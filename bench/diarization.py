"""Diarization accuracy on real multi-speaker recordings: the diarize stage alone, and what the
whole ingest gives users (the speaker labels of its ``segments`` rows).

    .venv/bin/python bench/diarization.py [--mode stage|ingest|both|encoders|single] [--split tune|held|all]
        [--simulated N] [--meetings] [--recordings DIR] [--work /tmp/bench_diarization] [--pipeline-args "--clustering threshold"]
        [--oracle-clustering] [--cuts 0.7,0.8,0.85,0.9] [--json out.json]

Recordings (every multi-speaker file with a reference RTTM in ../shared):
  - ``../shared/speech/pyannote-audio/tests/data``: 14 AMI clips of 30 s, scored inside their UEM;
  - ``../shared/diarization``: 3 AMI meeting excerpts (15-60 s, 4 speakers) and 13 two-speaker
    excerpts (9 s, coarse turns).
Split, fixed here so that figures are never reported on what was tuned on:
  tune = the 10 ``debug.train`` clips + the 9 EN2002b pairs;
  held = the 4 ``debug.development``/``debug.test`` clips + the 3 meeting excerpts + the 4 ES2002a pairs.
``--simulated N`` adds N conversations of 2-6 voices (``simulated``, reported apart): turns of
single-speaker files of ``../shared/speech`` (7 voices: Asterisk's en/fr/es/it/ru prompts, the
MFA speaker (its mfa_* clips), the LibriVox reader) laid end to end with 0.1-0.8 s gaps and some 0.3 s overlaps,
1.5-3 minutes each, with exact references. Never tuned on; they check the speaker count on
longer recordings with more voices than the AMI material has. ``--meetings`` adds the AMI clips
of one meeting laid end to end (4 recordings of 60-120 s; ``tune-long``/``held-long`` after
their clips' split): real speech, long enough for the diarizer's long-recording path. ``--recordings DIR`` adds your
own: every audio file under DIR with ``<stem>.rttm`` beside it (``own``, reported apart;
``--split none --recordings DIR`` for those alone).

Figures (pyannote.metrics): DER with its parts (missed, false alarm, confusion), with a ±0.25 s
collar (``collar=0.5``) and without; speakers found against the reference (the count is "right"
within ±1); and for the ingest's kept segments, speaker purity and consistency
(``pipeline.evaluation.speaker_purity_consistency``). Pooled figures are duration-weighted
sums over the recordings of a split. "Two-voice floor": the DER of the reference itself cut to at
most two voices at once (``two_voice_reference``), the part of a split's DER that a diarizer built
on a model of two voices at a time, as this one is, cannot remove. ``--oracle-clustering`` (stage
mode) also runs the stage with each (window, local speaker) given to the reference speaker it
overlaps most: the gap between the two stage rows is what better embeddings or clustering could
still win; the rest is the segmentation's. ``--cuts`` (stage mode) scores the stage at several
clustering cuts, each recording segmented and embedded once: with ``--recordings DIR``, the way
to choose ``--cluster-threshold`` for recordings of one's own domain.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

from pipeline.evaluation import annotation, der, load_rttm, load_uem, speaker_purity_consistency

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VOXFORGE_SHARED", REPO.parent / "shared"))


def recordings() -> list[dict]:
    """Each: uri, path, reference (Annotation), uem (Timeline or None), split, group. The AMI
    clips of ``../shared/speech/pyannote-audio`` and the recordings of ``../shared/diarization``
    (its ``MANIFEST.tsv``, else every audio file there with ``<stem>.rttm`` beside it, as its
    README lays them out; those are held). A set that is not there is left out with a note on
    stderr, so that the figures of the others still come."""
    out = []
    debug = SHARED / "speech" / "pyannote-audio" / "tests" / "data"
    needed = [debug / f"debug.{part}.{ext}" for part in ("train", "development", "test") for ext in ("rttm", "uem", "lst")]
    if all(f.is_file() for f in needed):
        for part in ("train", "development", "test"):
            refs = load_rttm(debug / f"debug.{part}.rttm")
            uems = load_uem(debug / f"debug.{part}.uem")
            for name in (debug / f"debug.{part}.lst").read_text(encoding="utf-8").split():
                uri = name.replace("ñ", "n")  # trñ00.wav is trn00 in the RTTM and UEM
                out.append({"uri": uri, "path": str(debug / f"{name}.wav"), "reference": refs[uri],
                            "uem": uems.get(uri), "split": "tune" if part == "train" else "held", "group": "ami-30s"})
    else:
        missing = [f.name for f in needed if not f.is_file()]
        print(f"{debug}: {', '.join(missing)} not found, its AMI clips are left out", file=sys.stderr)
    folder = SHARED / "diarization"
    if (folder / "MANIFEST.tsv").is_file():
        with open(folder / "MANIFEST.tsv", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                path = folder / row["path"]
                out.append({"uri": path.stem, "path": str(path), "reference": reference_of(folder / row["rttm"], path.stem),
                            "uem": None, "split": _diarization_split(folder, path),
                            "group": "ami-pairs-9s" if row["path"].startswith("pairs/") else "ami-meeting"})
    elif folder.is_dir():
        try:
            found = own_recordings(folder)
        except SystemExit as e:  # nothing there to score: the other sets still are
            print(f"{e}; left out", file=sys.stderr)
            found = []
        out += [{**r, "split": _diarization_split(folder, Path(r["path"])), "group": "diarization"} for r in found]
    else:
        print(f"{folder}: not found, its recordings are left out", file=sys.stderr)
    return out


def _diarization_split(folder: Path, path: Path) -> str:
    """The split of a recording of ``../shared/diarization``: the EN2002b pairs were tuned on,
    all the rest is held out (with or without its MANIFEST.tsv)."""
    rel = path.relative_to(folder).as_posix()
    return "tune" if rel.startswith("pairs/") and "en2002b" in path.stem else "held"


VOICES = {  # voice -> files of one speaker (paths relative to ../shared/speech)
    "asterisk-en": "asterisk-core-sounds/en/", "asterisk-fr": "asterisk-core-sounds/fr/",
    "asterisk-es": "asterisk-core-sounds/es/", "asterisk-it": "asterisk-core-sounds/it/",
    "asterisk-ru": "asterisk-core-sounds/ru/", "mfa": "mfa/tests/data/wav/mfa_", "librivox": "pocketsphinx/test/data/librivox/",
}


def simulate_conversations(work: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` conversations of 2-6 voices written to ``work`` as 16 kHz FLAC + reference."""
    import numpy as np
    import soundfile as sf
    import soxr

    speech = SHARED / "speech"
    if not (speech / "MANIFEST.tsv").is_file():
        raise SystemExit(f"--simulated: {speech / 'MANIFEST.tsv'} not found (the single-speaker files the "
                         f"conversations are built from; set VOXFORGE_SHARED)")
    with open(speech / "MANIFEST.tsv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["n_speakers"] == "1" and not r["path"].endswith(".raw")]
    files = {v: sorted(r["path"] for r in rows if r["path"].startswith(prefix) and 1.0 < float(r["duration_s"]) < 15)
             for v, prefix in VOICES.items()}
    rng = np.random.default_rng(seed)
    work.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        k = 2 + i % 5
        voices = list(rng.choice(sorted(files), size=k, replace=False))
        target = rng.uniform(90, 180)
        audio, turns, t, prev, used = [], [], 0.0, None, {v: 0 for v in voices}
        while t < target:
            v = voices[int(rng.integers(k))] if prev is None else rng.choice([x for x in voices if x != prev])
            path = files[v][used[v] % len(files[v])]
            used[v] += 1
            x, sr = sf.read(speech / path, dtype="float32", always_2d=True)
            x = soxr.resample(x.mean(1), sr, 16_000).astype(np.float32)
            x *= 0.1 / max(float(np.sqrt(np.mean(x ** 2))), 1e-4)  # same loudness for every voice
            gap = -0.3 if (prev is not None and rng.random() < 0.15) else rng.uniform(0.1, 0.8)
            start = max(0.0, t + gap)
            audio.append((start, x))
            turns.append((start, start + len(x) / 16_000, v))
            t, prev = start + len(x) / 16_000, v
        total = np.zeros(int(t * 16_000) + 1, np.float32)
        for start, x in audio:
            a = int(start * 16_000)
            total[a:a + len(x)] += x
        uri = f"sim{i:02d}-{k}spk"
        path = work / f"{uri}.flac"
        sf.write(path, np.clip(total, -1, 1), 16_000, subtype="PCM_16")
        out.append({"uri": uri, "path": str(path), "reference": annotation(turns, uri), "uem": None,
                    "split": "simulated", "group": f"simulated-{k}"})
    return out


def _entry_of(entries: dict, path: Path, uri: str, what: str, name: str | None = None):
    """The entry of ``name`` (default ``uri``) in a file's ``{uri: Annotation or Timeline}``,
    renamed ``uri`` (the scoring pairs hypothesis and reference by uri). A file of one other uri
    is taken as this recording's; one of several uris without ``name`` is refused (else it would
    silently not apply)."""
    name = uri if name is None else name
    entry = entries.get(name) or (next(iter(entries.values())) if len(entries) == 1 else None)
    if entry is None:
        raise SystemExit(f"{path}: no {what} for uri {name!r} (it has {sorted(entries)})")
    entry.uri = uri
    return entry


def reference_of(rttm: Path, uri: str, name: str | None = None):
    """The turns of ``name`` (default ``uri``) in an RTTM file, as an Annotation whose uri is ``uri``."""
    return _entry_of(load_rttm(rttm), rttm, uri, "turns", name)


def scored_region_of(uem_path: Path, uri: str, name: str | None = None):
    """The scored region (a Timeline) of ``name`` in a UEM file, by ``reference_of``'s rule."""
    return _entry_of(load_uem(uem_path), uem_path, uri, "scored region", name)


def own_recordings(folder: Path) -> list[dict]:
    """Every audio file under ``folder`` with a reference beside it (``<stem>.rttm``; its UEM
    ``<stem>.uem`` if there is one), split ``own``: a user's own conversations, or recordings
    nobody tuned on. The RTTM's turns of the file's stem are used (an RTTM that names one other
    uri is taken as that file's). A recording is named by its stem, or, where two files under
    ``folder`` share one (``a/call.wav``, ``b/call.wav``), by its path under ``folder`` without
    the suffix (``a/call``), with it where that is not unique either (``a/call.wav``,
    ``a/call.mp3``). Files without an RTTM are listed and left out; a folder with none
    is an error. The audio files are the ones the ingest would find there
    (``pipeline.discover``), as absolute paths: the ingest's rows name them so."""
    from pipeline.discover import discover

    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"{folder}: not a folder")
    found, missing = [], []
    for path in map(Path, discover([str(folder)])):
        if path.with_suffix(".rttm").is_file():
            found.append(path)
        else:
            missing.append(path.name)
    if missing:
        print(f"{folder}: no .rttm beside {len(missing)} audio file(s), left out: "
              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}", file=sys.stderr)
    if not found:
        raise SystemExit(f"{folder}: no audio file with a <stem>.rttm reference beside it")
    stems = Counter(p.stem for p in found)
    rel = {p: p.relative_to(os.path.abspath(folder)) for p in found}
    rel_stems = Counter(r.with_suffix("") for r in rel.values())
    out = []
    for path in found:
        # the stem; where it is not unique, the path under folder; where that is not either
        # (call.wav and call.mp3 side by side, one RTTM for both), the path with its suffix
        uri = (path.stem if stems[path.stem] == 1 else rel[path].with_suffix("").as_posix()
               if rel_stems[rel[path].with_suffix("")] == 1 else rel[path].as_posix())
        ref = reference_of(path.with_suffix(".rttm"), uri, path.stem)
        uem_path = path.with_suffix(".uem")
        uem = scored_region_of(uem_path, uri, path.stem) if uem_path.is_file() else None
        out.append({"uri": uri, "path": str(path), "reference": ref, "uem": uem, "split": "own", "group": "own"})
    return out


MEETINGS = {  # the AMI debug clips of one meeting (same room, same people), in their list order
    "trn00-03": ["trn00", "trn01", "trn02", "trn03"], "trn07-08": ["trn07", "trn08"],
    "dev00-01": ["dev00", "dev01"], "tst00-01": ["tst00", "tst01"],
}


def concatenated_meetings(recs: list[dict], work: Path) -> list[dict]:
    """Longer real recordings (60-120 s): the clips of one AMI meeting laid end to end, their
    references and UEMs shifted to match; split ``<split>-long`` after the clips' own split, so
    tune clips stay tune. What the 30 s clips cannot show: the diarizer on a minute or more of
    real speech (where only every other window is embedded)."""
    import numpy as np
    import soundfile as sf
    from pyannote.core import Annotation, Segment, Timeline

    from pipeline.decode import Decoder

    decoder = Decoder()
    by_uri = {r["uri"]: r for r in recs}
    work.mkdir(parents=True, exist_ok=True)
    out = []
    for name, clips in MEETINGS.items():
        uri = f"meeting-{name}"
        if not all(c in by_uri for c in clips):
            print(f"--meetings: the clips of {uri} are not all there, left out", file=sys.stderr)
            continue
        audio, ref, uem, t = [], Annotation(uri=uri), Timeline(uri=uri), 0.0
        for c in clips:
            r = by_uri[c]
            x = decoder(r["path"]).audio16  # mono, 16 kHz, as the ingest reads it
            for seg, _, label in r["reference"].itertracks(yield_label=True):
                ref[Segment(seg.start + t, seg.end + t)] = label
            for seg in r["uem"] or [Segment(0.0, len(x) / 16_000)]:
                uem.add(Segment(seg.start + t, seg.end + t))
            audio.append(x)
            t += len(x) / 16_000
        path = work / f"{uri}.wav"
        sf.write(path, np.concatenate(audio), 16_000)
        out.append({"uri": uri, "path": str(path), "reference": ref, "uem": uem,
                    "split": f"{by_uri[clips[0]]['split']}-long", "group": "ami-meeting-long"})
    return out


def n_speakers(reference, uem) -> int:
    return len((reference.crop(uem) if uem is not None else reference).labels())


def reference_clustering():
    """pyannote's ``OracleClustering`` fed with a reference set on it (``.reference``) before each
    recording: each (window, local speaker) of the segmentation goes to the reference speaker it
    overlaps most. What DER is left is the segmentation's (voices it merges within a window,
    overlapped speech it misses), which no speaker embedding or clustering can remove."""
    from pyannote.audio.pipelines.clustering import OracleClustering

    class ReferenceClustering(OracleClustering):
        reference = None

        def __call__(self, *args, segmentations=None, file=None, **kwargs):
            # the reference is cut into the segmentation's own windows, the last one padded as
            # pyannote pads it (a file shorter than one window still has one)
            sw, chunks = segmentations.sliding_window, segmentations.data.shape[0]
            file = {**file, "annotation": self.reference, "duration": sw[chunks - 1].end}
            with warnings.catch_warnings():  # numpy's "mean of empty slice": a reference voice no window holds
                warnings.simplefilter("ignore", RuntimeWarning)
                return super().__call__(*args, segmentations=segmentations, file=file, **kwargs)

    return ReferenceClustering()


def run_stage(recs: list[dict], cfg_args: list[str], oracle: bool = False) -> dict[str, list[tuple[float, float, str]]]:
    """The diarize stage alone, with the ingest's own settings (``cfg_args`` as on its command
    line), on 16 kHz audio decoded by the ingest's decoder: uri -> speaker turns. ``oracle``:
    the clustering is replaced by ``reference_clustering``, and the second pass that splits a
    speaker (``pipeline.speaker_split``) is off, so that the bound stays the clustering's."""
    from pipeline.decode import Decoder
    from pipeline.ingest import parse_args
    from pipeline.stages import Diarize, Segment

    cfg = parse_args(["--input", "-", "--output", "-", *cfg_args])
    decoder, segment, diarize = Decoder(), Segment(cfg), Diarize(cfg)
    if oracle:
        if diarize.diarizer is None or not diarize.diarizer.offline:
            raise SystemExit("--oracle-clustering needs the offline diarizer (no --diarization NAME)")
        pipe = diarize.diarizer.pipeline
        pipe.clustering, pipe.klustering = reference_clustering(), "OracleClustering"
        diarize.diarizer.split = None
    out = {}
    for r in recs:
        row = {"path": r["path"], "status": "ok", "audio16": decoder(r["path"]).audio16}
        segment.process(row)
        if oracle:
            pipe.clustering.reference = r["reference"]
        diarize.process(row)
        out[r["uri"]] = row["diarization"].turns if row["diarization"] else []
    return out


def sweepable(cfg_args: list[str]):
    """The ingest config of ``cfg_args``, if its clustering cut can be swept (else SystemExit
    saying why): before any work, so a long run does not stop at its end."""
    from pipeline.ingest import parse_args

    cfg = parse_args(["--input", "-", "--output", "-", *cfg_args])
    if cfg.diarization != "offline" or cfg.clustering != "threshold":
        raise SystemExit("--cuts sweeps the offline diarizer's clustering cut: not with --diarization NAME/none "
                         "or --clustering silhouette")
    if cfg.num_speakers is not None:
        raise SystemExit("--cuts with --num-speakers: a given speaker count fixes the clusters, whatever the cut; "
                         "leave it out of --pipeline-args")
    if cfg.cluster_threshold is not None:
        raise SystemExit("--cuts sets the clustering cut itself: leave --cluster-threshold out of --pipeline-args")
    return cfg


def run_stage_at_cuts(recs: list[dict], cfg_args: list[str], cuts: list[float]) -> dict[float, dict]:
    """The diarize stage, as ``run_stage``, at each clustering cut (``--cluster-threshold``): cut ->
    uri -> speaker turns. Each recording is segmented and its windows embedded once; only the
    clustering (milliseconds) and the second pass that splits a speaker (``pipeline.speaker_split``,
    which embeds that cut's speakers' pieces) run per cut. For choosing the cut on
    recordings of one's own domain (``--split none --recordings DIR --cuts ...``): the README says
    why a fixed cut is the offline diarizer's weak point on long recordings."""
    from pipeline.decode import Decoder
    from pipeline.stages import Diarize, Segment

    cfg = sweepable(cfg_args)
    decoder, segment, diarize = Decoder(), Segment(cfg), Diarize(cfg)
    pipe = diarize.diarizer.pipeline
    embed = pipe.get_embeddings  # the pipeline's own (every other window, pipeline.diarize)
    out: dict[float, dict] = {cut: {} for cut in cuts}
    for r in recs:
        row = {"path": r["path"], "status": "ok", "audio16": decoder(r["path"]).audio16}
        segment.process(row)
        once: list = []

        def embeddings(*args, _once=once, **kwargs):
            # the same segmentation gives the same embeddings whatever the cut
            if not _once:
                _once.append(embed(*args, **kwargs))
            return _once[0].copy()

        pipe.get_embeddings = embeddings
        for cut in cuts:
            pipe.clustering.threshold = cut
            one = dict(row)
            diarize.process(one)
            out[cut][r["uri"]] = one["diarization"].turns if one["diarization"] else []
    return out


def print_cuts(title: str, results: dict[float, dict], default: float) -> None:
    print(f"\n== {title}")
    print(f"{'cut':>5s} {'DER':>6s} {'missed':>6s} {'f.a.':>6s} {'conf.':>6s} {'DER0':>6s} {'±1':>5s}  speakers found/reference")
    for cut, res in results.items():
        q = res["pooled"]
        found = " ".join(f"{p['speakers_found']}/{p['speakers_ref']}" for p in res["per_recording"].values())
        print(f"{cut:5.2f} {q['der']:6.3f} {q['missed']:6.3f} {q['false_alarm']:6.3f} {q['confusion']:6.3f} "
              f"{q['der_no_collar']:6.3f} {q['speaker_count_within_1']:5.0%}  {found}")
    best = min(round(res["pooled"]["der"], 3) for res in results.values())
    at = [f"{cut:.2f}" for cut, res in results.items() if round(res["pooled"]["der"], 3) == best]
    print(f"lowest DER {best:.3f} at cut {', '.join(at)} (pass it as --cluster-threshold; the default, "
          f"the speaker encoder's, is {default})")


def run_ingest(recs: list[dict], work: Path, cfg_args: list[str]) -> tuple[dict, dict]:
    """The whole ingest on the recordings -> (uri -> all segment rows as (start, end, speaker),
    uri -> kept ones)."""
    import duckdb

    work.mkdir(parents=True, exist_ok=True)
    listing = work / "inputs.txt"
    listing.write_text("".join(r["path"] + "\n" for r in recs), encoding="utf-8")
    out = work / "out"
    cmd = [sys.executable, str(REPO / "pipeline" / "ingest.py"), "--input", str(listing), "--output", str(out), *cfg_args]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    by_path = {r["path"]: r["uri"] for r in recs}
    rows = duckdb.sql(f"SELECT source_path, start, \"end\", speaker, kept FROM "
                      f"read_parquet('{out}/manifests/segments/*.parquet', union_by_name=true)").fetchall()
    every, kept = {r["uri"]: [] for r in recs}, {r["uri"]: [] for r in recs}
    for path, s, e, spk, k in rows:
        uri = by_path.get(path)
        if uri is None:
            continue
        every[uri].append((s, e, spk))
        if k:
            kept[uri].append((s, e, spk))
    return every, kept


def two_voice_reference(reference):
    """The reference as a diarizer that outputs at most two voices at once (segmentation-3.0's
    powerset, pyannote's pipeline) could give it at best: wherever three or more speak, the two
    whose current turns began first (ties: by label). Its DER against the reference is the part
    of a split's error that no such diarizer can remove (the "two-voice floor")."""
    from pyannote.core import Annotation, Segment

    turns = [(seg.start, seg.end, label) for label in sorted(reference.labels())
             for seg in reference.label_timeline(label).support()]
    # sweep the turns' boundaries in time order, keeping the turns that are on (one per voice:
    # each label's turns are merged above), so an hour of turns costs milliseconds
    events = sorted([(s, 1, i) for i, (s, _, _) in enumerate(turns)] + [(e, 0, i) for i, (_, e, _) in enumerate(turns)])
    out, on, prev = Annotation(uri=reference.uri), set(), None
    for t, starts, i in events:
        if prev is not None and t > prev and on:
            for k in sorted(on, key=lambda k: (turns[k][0], turns[k][2]))[:2]:
                out[Segment(prev, t), len(out)] = turns[k][2]
        (on.add if starts else on.discard)(i)
        prev = t
    return out.support()


def score(recs: list[dict], turns: dict, kept: dict | None = None) -> dict:
    """DER (±0.25 s collar and none), speaker counts and, given kept segments, purity and
    consistency: per recording and pooled."""
    refs = {r["uri"]: r["reference"] for r in recs}
    uems = {r["uri"]: r["uem"] for r in recs if r["uem"] is not None}
    hyps = {u: annotation(t, u) for u, t in turns.items()}
    collar, none = der(refs, hyps, uems, collar=0.5), der(refs, hyps, uems, collar=0.0)
    per, count_ok, sums = {}, 0, [0.0, 0.0, 0.0, 0.0]
    for r in recs:
        u = r["uri"]
        k_ref, k_hyp = n_speakers(r["reference"], r["uem"]), len(hyps[u].labels())
        count_ok += abs(k_ref - k_hyp) <= 1
        per[u] = {"group": r["group"], "der": collar["per_uri"][u], "der_no_collar": none["per_uri"][u],
                  "speakers_ref": k_ref, "speakers_found": k_hyp}
        if kept is not None:
            pc = speaker_purity_consistency(r["reference"], kept[u], r["uem"])
            per[u].update(purity=pc["purity"], consistency=pc["consistency"])
            sums = [a + b for a, b in zip(sums, (*pc["purity_sums"], *pc["consistency_sums"]))]
    for r in recs:  # the same for every call on these recordings (stage, oracle, ingest)
        if "two_voice_reference" not in r:
            r["two_voice_reference"] = two_voice_reference(r["reference"])
    floor = der(refs, {r["uri"]: r["two_voice_reference"] for r in recs}, uems, collar=0.5)
    pooled = {"der": collar["der"], "missed": collar["missed"], "false_alarm": collar["false_alarm"],
              "confusion": collar["confusion"], "der_no_collar": none["der"], "two_voice_floor": floor["der"],
              "speaker_count_within_1": count_ok / len(recs), "n": len(recs)}
    if kept is not None:
        pooled["purity"] = sums[0] / sums[1] if sums[1] else None
        pooled["consistency"] = sums[2] / sums[3] if sums[3] else None
    return {"pooled": pooled, "per_recording": per}


def single_speaker_check(work: Path, cfg_args: list[str]) -> dict:
    """The ingest on every single-speaker file of ``../shared/speech`` longer than 8 s (what a TTS
    corpus mostly is): how many sources get more than one speaker label, seconds kept, and
    seconds dropped per reason (a diarizer that splits one voice, or hears overlap where there
    is none, drops clean speech as mixed_speakers / overlap)."""
    import duckdb

    with open(SHARED / "speech" / "MANIFEST.tsv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t")
                if r["n_speakers"] == "1" and float(r["duration_s"]) > 8 and not r["path"].endswith(".raw")]
    recs = [{"uri": Path(r["path"]).stem, "path": str(SHARED / "speech" / r["path"])} for r in rows]
    shutil.rmtree(work, ignore_errors=True)
    run_ingest(recs, work, cfg_args)
    seg = f"read_parquet('{work}/out/manifests/segments/*.parquet', union_by_name=true)"
    split = duckdb.sql(f"SELECT count(*) FROM (SELECT source_path FROM {seg} GROUP BY 1 "
                       f"HAVING count(DISTINCT speaker) > 1)").fetchall()[0][0]
    kept = duckdb.sql(f"SELECT coalesce(sum(duration), 0) FROM {seg} WHERE kept").fetchall()[0][0]
    drops = dict(duckdb.sql(f"SELECT drop_reason, round(sum(duration), 1) FROM {seg} WHERE NOT kept "
                            f"GROUP BY 1 ORDER BY 2 DESC").fetchall())
    return {"sources": len(recs), "minutes": sum(float(r["duration_s"]) for r in rows) / 60,
            "sources_with_several_speakers": split, "kept_s": kept, "dropped_s": drops}


def encoder_auc(recs: list[dict], encoders: list[str]) -> dict:
    """Same/different-speaker AUC of each speaker encoder on 1-2 s windows of the references'
    single-speaker speech (a speaker's turns, 0.3 s gaps bridged, less every other speaker's),
    all pairs within a recording: how well the embeddings alone tell speakers apart."""
    import itertools

    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    from pipeline.decode import Decoder
    from pipeline.speaker_embedding import SPEAKER_ENCODERS

    models = {name: SPEAKER_ENCODERS[name]("cpu") for name in encoders}
    pairs = {name: ([], []) for name in encoders}
    decoder = Decoder()
    for r in recs:
        audio = decoder(r["path"]).audio16
        ref = r["reference"]
        windows = []
        for label in ref.labels():
            others = ref.subset([x for x in ref.labels() if x != label]).get_timeline().support()
            for seg in ref.label_timeline(label).support(0.3).extrude(others):
                s = seg.start
                while s + 1.0 <= seg.end and len(windows) < 60:
                    e = min(s + 2.0, seg.end)
                    windows.append((label, audio[int(s * 16_000):int(e * 16_000)]))
                    s = e
        if len({label for label, _ in windows}) < 2:
            continue
        for name, model in models.items():
            emb = np.stack([model(torch.from_numpy(w)[None, None])[0] for _, w in windows])
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            for i, j in itertools.combinations(range(len(windows)), 2):
                pairs[name][0].append(windows[i][0] == windows[j][0])
                pairs[name][1].append(float(emb[i] @ emb[j]))
    return {name: {"auc": roc_auc_score(*pairs[name]), "pairs": len(pairs[name][0])} for name in encoders}


def _f(x) -> str:
    return "   -  " if x is None else f"{x:6.3f}"


def print_report(title: str, res: dict) -> None:
    print(f"\n== {title}")
    print(f"{'recording':28s} {'group':13s} {'DER':>6s} {'DER0':>6s} {'spk':>7s} {'purity':>6s} {'consis':>6s}")
    for u, p in res["per_recording"].items():
        print(f"{u:28s} {p['group']:13s} {_f(p['der'])} {_f(p['der_no_collar'])} "
              f"{p['speakers_found']:>3d}/{p['speakers_ref']:<3d} {_f(p.get('purity'))} {_f(p.get('consistency'))}")
    q = res["pooled"]
    print(f"POOLED ({q['n']}): DER {q['der']:.3f} (missed {q['missed']:.3f}, false alarm {q['false_alarm']:.3f}, "
          f"confusion {q['confusion']:.3f}; no collar {q['der_no_collar']:.3f}; two-voice floor "
          f"{q['two_voice_floor']:.3f}); speaker count within ±1 on "
          f"{q['speaker_count_within_1']:.0%}" + (f"; purity {_f(q['purity'])}, consistency {_f(q['consistency'])}"
                                                  if "purity" in q else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["stage", "ingest", "both", "encoders", "single"], default="both",
                    help="encoders: same/different-speaker AUC of each speaker encoder on reference windows; "
                         "single: the ingest on the single-speaker files (speakers per source, what is dropped)")
    ap.add_argument("--split", choices=["tune", "held", "all", "none"], default="all",
                    help="which real recordings (none: only --simulated, --meetings and --recordings)")
    ap.add_argument("--simulated", type=int, default=0, metavar="N",
                    help="also N simulated conversations of 2-6 voices, reported apart")
    ap.add_argument("--meetings", action="store_true",
                    help="also the AMI clips of one meeting laid end to end (60-120 s; tune-long/held-long)")
    ap.add_argument("--recordings", type=Path, default=None, metavar="DIR",
                    help="also your own recordings: every audio file under DIR with <stem>.rttm beside it "
                         "(and <stem>.uem if any), reported apart as split 'own'")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_diarization"))
    ap.add_argument("--pipeline-args", default="", help="ingest options (e.g. '--clustering threshold')")
    ap.add_argument("--oracle-clustering", action="store_true",
                    help="stage mode: each (window, local speaker) goes to the reference speaker it overlaps most, "
                         "so the DER left is the segmentation's, not the embeddings' or the clustering's")
    ap.add_argument("--cuts", default=None, metavar="C1,C2,...",
                    help="stage mode: also the DER at each of these clustering cuts (--cluster-threshold; "
                         "euclidean distance between unit embeddings, in (0, 2)), each recording embedded once")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    if a.oracle_clustering and a.mode not in ("stage", "both"):
        ap.error("--oracle-clustering runs the diarize stage: use it with --mode stage or --mode both")
    cuts = None
    if a.cuts is not None:
        if a.mode not in ("stage", "both"):
            ap.error("--cuts runs the diarize stage: use it with --mode stage or --mode both")
        try:
            cuts = sorted({float(c) for c in a.cuts.split(",") if c.strip()})
        except ValueError:
            ap.error(f"--cuts takes numbers separated by commas (e.g. 0.7,0.8,0.85,0.9), got {a.cuts!r}")
        if not cuts or not all(0 < c < 2 for c in cuts):
            ap.error(f"--cuts: each cut is a distance between unit embeddings, in (0, 2), got {a.cuts!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg_args = shlex.split(a.pipeline_args)
    if cuts:
        cfg = sweepable(cfg_args)  # refused now, not after a first split's stage run
        default_cut = cfg.resolved().cluster_threshold  # the cut the stage runs at
        cuts = sorted({*cuts, default_cut})
        if cfg.min_speakers is not None or cfg.max_speakers is not None:
            print("note: --min-speakers/--max-speakers bound the count at every cut, so neighbouring cuts may score "
                  "the same", file=sys.stderr)
    splits = {"all": ["tune", "held"], "none": []}.get(a.split, [a.split])
    # ../shared only where a split or the meetings need it: --split none --recordings DIR runs
    # on a machine without it
    recs = recordings() if splits or a.meetings else []
    if splits and not any(r["split"] in splits for r in recs):
        raise SystemExit(f"--split {a.split}: no {' or '.join(splits)} recordings with references under {SHARED} (set "
                         f"VOXFORGE_SHARED to the folder holding speech/ and diarization/, or use --split none "
                         f"--recordings DIR)")
    if a.meetings:
        long = concatenated_meetings(recs, a.work / "meetings-audio")
        if not long:
            raise SystemExit(f"--meetings: none of the AMI meetings' clips are under {SHARED} (set VOXFORGE_SHARED)")
        recs += long
        splits += [f"{base}-long" for base in splits or ["tune", "held"]]
    if a.simulated:
        recs += simulate_conversations(a.work / "simulated-audio", a.simulated)
        splits.append("simulated")
    if a.recordings:
        recs += own_recordings(a.recordings)
        splits.append("own")
    report: dict = {"pipeline_args": a.pipeline_args}
    if a.mode == "single":
        res = single_speaker_check(a.work / "single", cfg_args)
        print(f"\n== single-speaker files: {res['sources']} sources ({res['minutes']:.1f} min), "
              f"{res['sources_with_several_speakers']} labelled with more than one speaker; kept {res['kept_s']:.1f} s; "
              f"dropped (s): {res['dropped_s']}")
        report["single"], splits = res, []
    for split in splits:
        sub = [r for r in recs if r["split"] == split]
        if not sub:
            print(f"\n== {split}: no recordings")
            continue
        if a.mode == "encoders":
            res = encoder_auc(sub, ["resemblyzer", "campplus"])
            print(f"\n== speaker encoders, {split}: " + ", ".join(
                f"{k} AUC {v['auc']:.3f}" for k, v in res.items()) + f" ({next(iter(res.values()))['pairs']} pairs)")
            report[f"encoders_{split}"] = res
        if a.mode in ("stage", "both"):
            t = time.perf_counter()
            # with --cuts, one segmentation and embedding pass gives the stage at its own cut too
            by_cut = run_stage_at_cuts(sub, cfg_args, cuts) if cuts else None
            res = score(sub, by_cut[default_cut] if by_cut else run_stage(sub, cfg_args))
            print_report(f"diarize stage alone, {split} ({time.perf_counter() - t:.0f} s)", res)
            report[f"stage_{split}"] = res
            if a.oracle_clustering:
                t = time.perf_counter()
                res = score(sub, run_stage(sub, cfg_args, oracle=True))
                print_report(f"diarize stage alone, oracle clustering, {split} ({time.perf_counter() - t:.0f} s)", res)
                report[f"stage_oracle_{split}"] = res
            if by_cut:
                swept = {cut: score(sub, turns) for cut, turns in by_cut.items()}
                print_cuts(f"diarize stage alone at each clustering cut (the default's among them), {split}", swept,
                           default_cut)
                report[f"stage_cuts_{split}"] = {str(cut): res for cut, res in swept.items()}
        if a.mode in ("ingest", "both"):
            t = time.perf_counter()
            shutil.rmtree(a.work / split, ignore_errors=True)  # a fresh run, not a resume
            every, kept = run_ingest(sub, a.work / split, cfg_args)
            res = score(sub, every, kept)
            print_report(f"ingest segments (all rows' speakers; purity/consistency of kept rows), {split} "
                         f"({time.perf_counter() - t:.0f} s)", res)
            report[f"ingest_{split}"] = res
    if a.json:
        a.json.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
