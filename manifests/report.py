"""``python -m manifests report OUT``: one self-contained HTML page about an output directory.

The page is rebuilt from the manifests (DuckDB views) every time, never appended to, so it
always says what the manifests say. It shows the corpus summary and the runs, figures
(matplotlib, inline SVG), audio of sampled segments (Ogg/Vorbis data URIs, ``manifests.clips``)
and, when ``OUT/manifests/tokens`` exists, the tokens of each codec. It needs no network to
open: no script, font or style is loaded from anywhere; every byte is in the file.

Size: figures are a few tens of KB each whatever the corpus size (histograms and top-N
bars); only the audio grows with the sample counts, and it is capped: clips are cut to
``clip_seconds`` and added until the page would pass ``max_bytes``; the page says how many
clips the cap left out.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf

from manifests.clips import Clip, ClipError, flac_clip, source_clip
from manifests.shards import SEMANTIC_CODEBOOK_SIZE, read_flac_members, read_token_shard
from manifests.store import atomic_write_bytes, table_dir
from manifests.tokens import token_shard_path
from manifests.views import SUMMARY, connect

DEFAULT_NAME = "report.html"


class ReportError(Exception):
    """The report cannot be built (no manifests, bad settings); the message says what to do."""


@dataclass
class ReportConfig:
    """What the page shows and how large it may grow.

    Sizes in bytes, durations in seconds."""

    top_speakers: int = 25  # speakers drawn by name; the long tail is a histogram
    listen_kept: int = 12  # kept segments to listen to
    listen_per_reason: int = 3  # dropped segments to listen to, per drop reason
    clip_seconds: float = 15.0  # a clip is cut to this
    max_bytes: int = 20_000_000  # the page's cap; clips that would pass it are left out
    prompt_seconds: float = 3.0  # the trainer's shortest voice prompt (model DataConfig.prompt_min_s)
    max_token_frames: int = 5_000_000  # semantic codes read for the codebook figures (per codec)
    seed: int = 0  # which segments are sampled to listen to

    def __post_init__(self):
        for name in ("top_speakers", "listen_kept", "listen_per_reason", "max_token_frames", "seed"):
            if getattr(self, name) < 0:
                raise ReportError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.clip_seconds > 0:
            raise ReportError(f"clip_seconds must be > 0, got {self.clip_seconds}")
        if self.max_bytes < 100_000:
            raise ReportError(f"max_bytes {self.max_bytes} leaves no room for the figures; use >= 100000 (0.1 MB)")
        if not self.prompt_seconds > 0:
            raise ReportError(f"prompt_seconds must be > 0, got {self.prompt_seconds}")


@dataclass
class ReportResult:
    path: Path
    bytes: int
    seconds: float
    clips: int  # clips embedded
    clips_left_out: int  # clips the page size cap left out
    clips_unavailable: int  # sampled segments whose audio could not be read
    figures: int
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # s per section


# --------------------------------------------------------------------------------------
# small HTML helpers

def esc(x) -> str:
    return html.escape("" if x is None else str(x))


def fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def table(columns: list[str], rows: list[tuple], cls: str = "") -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{v if isinstance(v, Raw) else esc(fmt(v))}</td>" for v in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Raw(str):
    """HTML that a table cell takes as is."""


def _floats(d: dict) -> dict[str, np.ndarray]:
    """fetchnumpy() columns -> float arrays with NaN for NULL."""
    out = {}
    for k, v in d.items():
        if np.ma.isMaskedArray(v):
            v = v.astype(float).filled(np.nan) if v.dtype.kind in "fiu" else v.filled(None)
        out[k] = v
    return out


# --------------------------------------------------------------------------------------


class Report:
    """Builds the page of one output directory. ``build()`` writes it and returns a :class:`ReportResult`."""

    def __init__(self, out: str | os.PathLike, cfg: ReportConfig | None = None):
        self.out = Path(out)
        if not (self.out / "manifests").is_dir():
            raise ReportError(f"{str(self.out)!r} has no manifests/ directory (is it an ingest output?)")
        self.cfg = cfg or ReportConfig()
        self.con = connect(self.out)
        self.figures = 0
        self.thresholds = self._thresholds()

    # -- data ------------------------------------------------------------------------------
    def q(self, sql: str, params: list | None = None) -> list[tuple]:
        return self.con.execute(sql, params or []).fetchall()

    def qnp(self, sql: str, params: list | None = None) -> dict[str, np.ndarray]:
        return _floats(self.con.execute(sql, params or []).fetchnumpy())

    def _thresholds(self) -> dict:
        """Filter settings of the latest ingest run (the defaults of IngestConfig if none is recorded)."""
        from pipeline.config import IngestConfig

        d = {f.name: f.default for f in dataclasses.fields(IngestConfig) if f.default is not dataclasses.MISSING}
        row = self.q("SELECT config FROM runs WHERE job = 'ingest' AND config IS NOT NULL ORDER BY started DESC LIMIT 1")
        if row:
            try:
                d.update(json.loads(row[0][0]))
                d["_from"] = "the latest ingest run's config"
            except (TypeError, ValueError):
                d["_from"] = "IngestConfig defaults (the run's config is not JSON)"
        else:
            d["_from"] = "IngestConfig defaults (no ingest run recorded)"
        return d

    def th(self, name: str) -> tuple[float, str]:
        """(value, name) of a filter threshold; NaN (not drawn) when the config has none."""
        v = self.thresholds.get(name)
        return (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan), name

    def figure(self, name: str, svg: str, caption: str) -> str:
        self.figures += 1
        return f'<figure class="plot" data-plot="{esc(name)}">{svg}<figcaption>{caption}</figcaption></figure>'

    # -- sections --------------------------------------------------------------------------
    def summary(self) -> str:
        cur = self.con.execute(SUMMARY)
        cols = [c[0] for c in cur.description]
        vals = cur.fetchone()
        first = self.q(f"SELECT {_ts('min(started)')}, {_ts('max(finished)')} FROM runs")[0]
        rows = list(zip(cols, vals))
        rows.append(("output", str(self.out.resolve())))
        rows.append(("first run started / last finished", f"{fmt(first[0])} / {fmt(first[1])}"))
        return '<section id="summary"><h2>Corpus</h2>' + table(["figure", "value"], rows, "kv") + self.runs() + "</section>"

    def runs(self) -> str:
        rows = []
        for run_id, job, started, finished, secs, config, versions, stats in self.q(
                f"SELECT run_id, job, {_ts('started')}, {_ts('finished')}, epoch(finished) - epoch(started), config, "
                "versions, stats FROM runs ORDER BY runs.started"):
            wall = f"{secs:.1f} s" if secs is not None else "unfinished (killed?)"
            rows.append((job, run_id, started, finished, wall,
                         Raw(_details("config", config)), Raw(_details("versions", versions)),
                         Raw(_details("stats", stats))))
        return "<h3>Runs</h3>" + (table(["job", "run", "started", "finished", "wall", "config", "versions", "stats"], rows)
                                  if rows else "<p>No run recorded.</p>")

    def durations(self) -> str:
        from manifests import plots

        d = self.qnp("SELECT duration FROM segments WHERE kept")["duration"]
        fig, (ax,) = plots.figure()
        plots.histogram(ax, d, None, "duration of a kept segment (s)",
                        [self.th("min_duration"), self.th("max_duration")])
        cap = (f"{len(d)} kept segments, {d.sum() / 3600:.3f} h; median {np.median(d):.1f} s, "
               f"10–90 % {np.percentile(d, 10):.1f}–{np.percentile(d, 90):.1f} s." if len(d) else "No kept segment.")
        return self.figure("durations", plots.to_svg(fig), cap)

    def speakers(self) -> str:
        from manifests import plots

        c = self.cfg
        rows = self.q(
            "SELECT speaker, sum(duration) AS s, count(*) AS n, count(*) FILTER (WHERE duration >= ?) AS n_prompt "
            "FROM segments WHERE kept GROUP BY 1 ORDER BY s DESC, speaker", [c.prompt_seconds])
        flagged = [r for r in rows if r[3] < 2]
        top = rows[: c.top_speakers]
        fig, (a1, a2) = plots.figure(2, height=max(2.8, 0.16 * len(top) + 0.8))
        plots.barh(a1, [r[0] for r in top], [r[1] / 60 for r in top], "kept minutes",
                   colors=[plots.THRESHOLD if r[3] < 2 else plots.KEPT for r in top],
                   notes=[f"{r[2]} seg" for r in top])
        a1.set_title(f"top {len(top)} of {len(rows)} speakers (orange: flagged)", fontsize=8)
        minutes = np.array([r[1] / 60 for r in rows])
        if len(minutes):
            a2.hist(minutes, bins=40, color=plots.KEPT, log=len(rows) > 50)
            a2.set_xlabel("kept minutes of a speaker")
            a2.set_ylabel("speakers")
            a2.set_title("all speakers (the long tail)", fontsize=8)
        else:
            plots.empty_note(a2)
        cap = (f"{len(rows)} speakers; <b>{len(flagged)} flagged</b>: fewer than two kept segments of at least "
               f"{c.prompt_seconds:g} s, so some of their segments have no voice prompt from another segment of the "
               f"same speaker (the trainer then falls back to a prefix of the segment itself, or none).")
        body = self.figure("speakers", plots.to_svg(fig), cap)
        if flagged:
            shown = flagged[:50]
            body += ("<details><summary>flagged speakers" + (f" (first {len(shown)} of {len(flagged)})" if len(flagged) > 50 else "")
                     + "</summary>" + table(["speaker", "kept s", "segments", f"segments ≥ {c.prompt_seconds:g} s"],
                                           [(r[0], round(r[1], 1), r[2], r[3]) for r in shown]) + "</details>")
        return body

    def languages(self) -> str:
        from manifests import plots

        rows = self.q("SELECT coalesce(language, '?') AS lang, sum(duration) / 3600 AS h, avg(language_prob) AS p, "
                      "count(DISTINCT source_id) AS n FROM segments WHERE kept GROUP BY 1 ORDER BY h DESC LIMIT 30")
        probs = self.qnp("SELECT coalesce(language_prob, 'NaN'::DOUBLE) AS p FROM sources WHERE status = 'ok'")["p"]
        fig, (a1, a2) = plots.figure(2)
        plots.barh(a1, [r[0] for r in rows], [r[1] for r in rows], "kept hours",
                   notes=[f"p̄ {fmt(r[2])}, {r[3]} src" for r in rows])
        plots.histogram(a2, probs, None, "language probability of a source", label="sources")
        a2.set_ylabel("sources")
        cap = ("Kept hours per language (p̄: mean language probability of its kept segments; src: sources). "
               "Right: the probability of each source's language. An English-only model always says "
               "<code>en</code> with probability 1.")
        return self.figure("languages", plots.to_svg(fig), cap)

    def outcomes(self) -> str:
        """Drop reasons: totals, and their share along the commit order of the parts (time)."""
        from manifests import plots
        from pipeline.quality import DROP_REASONS

        totals = self.q("SELECT coalesce(drop_reason, 'kept') AS o, count(*) AS n, sum(duration) / 60 AS m "
                        "FROM segments GROUP BY 1 ORDER BY n DESC")
        seen = {t[0] for t in totals}
        names = [n for n in ("kept", *DROP_REASONS) if n in seen] + sorted(seen - set(DROP_REASONS) - {"kept"})
        colors = plots.reason_colors(names)
        glob = str(table_dir(self.out, "segments") / "*.parquet").replace("'", "''")
        has_parts = bool(list(table_dir(self.out, "segments").glob("*.parquet")))
        per_part = self.q(
            f"SELECT regexp_extract(filename, '([^/]+)\\.parquet$', 1) AS part, coalesce(drop_reason, 'kept') AS o, "
            f"count(*) FROM read_parquet('{glob}', filename=true, union_by_name=true) GROUP BY 1, 2") if has_parts else []
        parts = sorted({p for p, _, _ in per_part})
        n_groups = min(len(parts), 24)
        groups = [parts[i * len(parts) // n_groups:(i + 1) * len(parts) // n_groups] for i in range(n_groups)]
        labels = [g[0] if len(g) == 1 else f"{g[0]}–{g[-1]}" for g in groups]
        where = {p: i for i, g in enumerate(groups) for p in g}
        counts = {n: np.zeros(n_groups) for n in names}
        for p, o, n in per_part:
            counts[o][where[p]] += n
        total = sum(counts.values()) if counts else np.zeros(n_groups)
        share = {n: 100 * v / np.maximum(total, 1) for n, v in counts.items()}
        fig, (a1, a2) = plots.figure(2, width=8.5)
        by = {t[0]: t for t in totals}
        plots.barh(a1, names, [by[n][1] for n in names], "segments", colors=[colors[n] for n in names],
                   notes=[f"{by[n][2]:.1f} min" for n in names])
        plots.stacked_bars(a2, labels, share, colors, "% of segments")
        a2.set_xlabel("manifest parts, in commit order")
        cap = ("Left: kept segments and each drop reason (the first failing rule, in the order of "
               "<code>pipeline.quality.DROP_REASONS</code>), with their minutes. Right: the share of each outcome "
               "along the parts in the order they were committed, i.e. over the runs' time.")
        return self.figure("drop_reasons", plots.to_svg(fig), cap)

    def distributions(self) -> str:
        from manifests import plots

        d = self.qnp(
            "SELECT kept, coalesce(quality.snr_db, 'NaN'::DOUBLE) AS snr, coalesce(quality.speech_rate_cps, 'NaN'::DOUBLE) AS rate, "
            "coalesce(asr.avg_logprob, 'NaN'::DOUBLE) AS logprob, coalesce(asr.no_speech_prob, 'NaN'::DOUBLE) AS nsp, "
            "coalesce(asr.compression_ratio, 'NaN'::DOUBLE) AS cr FROM segments")
        kept = d["kept"].astype(bool) if len(d["kept"]) else np.zeros(0, bool)
        t = self.thresholds
        specs = [
            ("snr", "SNR (dB, capped at 100)", [self.th("min_snr_db")]),
            ("rate", "speech rate (characters/s)", [self.th("min_speech_rate"),
                                                     self.th("max_speech_rate")]),
            ("logprob", "ASR avg logprob", [self.th("min_avg_logprob")]),
            ("nsp", "ASR no-speech probability", [self.th("max_no_speech_prob")]),
            ("cr", "ASR compression ratio", [self.th("max_compression_ratio")]),
        ]
        out = ""
        for row in (specs[:3], specs[3:]):
            fig, axes = plots.figure(len(row), width=3.0 * len(row) + 0.5)
            for ax, (k, label, th) in zip(axes, row):
                v = d[k].astype(float)
                plots.histogram(ax, v[kept], v[~kept], label, th)
            names = "_".join(k for k, _, _ in row)
            out += self.figure(f"quality_{names}", plots.to_svg(fig), "")
        out += (f"<p class='note'>Dashed lines: the filter thresholds ({esc(t['_from'])}). A dropped segment is "
                "dropped for the first rule it fails, so a dropped one may lie inside a threshold it passed.</p>")
        return out

    def sources(self) -> str:
        from manifests import plots

        status = self.q("SELECT status, count(*), coalesce(sum(duration), 0) / 3600 FROM sources GROUP BY 1 ORDER BY 2 DESC")
        reasons = self.q("SELECT status || ': ' || split_part(error, ':', 1) AS r, count(*) FROM sources "
                         "WHERE status <> 'ok' GROUP BY 1 ORDER BY 2 DESC, 1")
        fig, (a1, a2) = plots.figure(2)
        col = {"ok": plots.KEPT, "rejected": plots.THRESHOLD, "failed": plots.DROPPED}
        plots.barh(a1, [s[0] for s in status], [s[1] for s in status], "sources",
                   colors=[col.get(s[0], "#868e96") for s in status], notes=[f"{s[2]:.3f} h" for s in status])
        plots.barh(a2, [r[0] for r in reasons], [r[1] for r in reasons], "sources", colors=plots.DROPPED)
        if not reasons:
            plots.empty_note(a2, "every source is ok")
        body = self.figure("sources", plots.to_svg(fig), "Sources by status (hours of audio decoded), and the reasons "
                                                         "of those not ok.")
        bad = self.q("SELECT path, status, error FROM sources WHERE status <> 'ok' ORDER BY status, path LIMIT 100")
        n_bad = self.q("SELECT count(*) FROM sources WHERE status <> 'ok'")[0][0]
        if bad:
            body += ("<details open><summary>sources not ok" + (f" (first 100 of {n_bad})" if n_bad > 100 else "")
                     + "</summary>" + table(["path", "status", "error"], bad, "wrap") + "</details>")
        return body

    def tokens(self) -> str:
        """Per codec: samples, frames, failures, and semantic codebook usage; '' without a tokens table."""
        if not (self.out / "manifests" / "tokens").is_dir():
            return ""
        from manifests import plots

        codecs = self.q(
            "SELECT codec_id, count(*) FILTER (WHERE status = 'ok'), count(*) FILTER (WHERE status <> 'ok'), "
            "coalesce(sum(n_frames), 0), coalesce(sum(duration) FILTER (WHERE status = 'ok'), 0) / 3600, count(DISTINCT shard) "
            "FROM tokens GROUP BY 1 ORDER BY 1")
        kept = self.q("SELECT count(*) FROM segments WHERE kept")[0][0]
        body = '<section id="tokens"><h2>Tokens</h2>'
        if not codecs:
            return body + "<p>The tokens table is empty.</p></section>"
        body += table(["codec", "samples ok", "failed", "frames", "hours", "shards", "kept segments without tokens"],
                      [(*r, kept - r[1]) for r in codecs])
        for codec_id, *_ in codecs:
            fails = self.q("SELECT split_part(error, ':', 1) AS reason, count(*), any_value(error) FROM tokens "
                           "WHERE codec_id = ? AND status <> 'ok' GROUP BY 1 ORDER BY 2 DESC", [codec_id])
            body += f"<h3>{esc(codec_id)}</h3>"
            if fails:
                body += table(["failure", "samples", "example"], fails, "wrap")
            body += self._codebook(codec_id, plots)
        return body + "</section>"

    def _codebook(self, codec_id: str, plots) -> str:
        shards = [r[0] for r in self.q("SELECT DISTINCT shard FROM tokens WHERE codec_id = ? AND status = 'ok' ORDER BY 1",
                                       [codec_id])]
        counts = np.zeros(SEMANTIC_CODEBOOK_SIZE, np.int64)
        n_frames = n_samples = shards_read = 0
        for shard in shards:
            path = token_shard_path(self.out, codec_id, shard)
            if not path.is_file():
                continue
            for s in read_token_shard(path):
                codes = np.bincount(s.semantic.astype(np.int64), minlength=SEMANTIC_CODEBOOK_SIZE)
                counts += codes[:SEMANTIC_CODEBOOK_SIZE]
                n_frames += s.n_frames
                n_samples += 1
            shards_read += 1
            if n_frames >= self.cfg.max_token_frames:
                break
        if not n_frames:
            return "<p>No token shard of this codec could be read.</p>"
        p = counts[counts > 0] / n_frames
        perplexity = float(np.exp(-(p * np.log(p)).sum()))
        used = int((counts > 0).sum())
        fig, (a1, a2) = plots.figure(2)
        ranked = np.sort(counts)[::-1]
        a1.semilogy(np.arange(1, used + 1), ranked[:used], color=plots.KEPT)
        a1.set_xlabel("code rank")
        a1.set_ylabel("frames")
        a1.set_title("rank–frequency of the semantic codes", fontsize=8)
        a2.hist(counts, bins=50, color=plots.KEPT, log=True)
        a2.set_xlabel("frames a code was used for")
        a2.set_ylabel("codes")
        a2.set_title("histogram of code frequencies", fontsize=8)
        cap = (f"Semantic codebook of {esc(codec_id)}: <b>perplexity {perplexity:.0f}</b> of {SEMANTIC_CODEBOOK_SIZE}, "
               f"<b>{100 * used / SEMANTIC_CODEBOOK_SIZE:.1f} %</b> of the codes used ({used}), over {n_frames} frames of "
               f"{n_samples} samples in {shards_read} of {len(shards)} shards"
               + (f" (reading stops after {self.cfg.max_token_frames} frames)" if shards_read < len(shards) else "") + ".")
        return self.figure(f"codebook_{codec_id}", plots.to_svg(fig), cap)

    # -- listen ----------------------------------------------------------------------------
    def _samples(self) -> list[tuple[str, dict]]:
        """(group, segment) pairs interleaved kept, reason 1, reason 2, ..., kept, ... so that a cap cuts
        every group alike."""
        c = self.cfg
        cols = ("key, source_path, start, \"end\", duration, speaker, language, language_prob, text, kept, drop_reason, "
                "segments.shard, shards.path AS shard_path, quality.snr_db AS snr_db, quality.speech_rate_cps AS rate, "
                "quality.clipping_ratio AS clipping, quality.overlap_ratio AS overlap, asr.avg_logprob AS logprob, "
                "asr.no_speech_prob AS no_speech, asr.compression_ratio AS compression")
        base = f"SELECT {cols}, coalesce(drop_reason, 'kept') AS grp FROM segments LEFT JOIN shards USING (shard)"
        rows = self.con.execute(
            f"SELECT * FROM ({base}) QUALIFY row_number() OVER (PARTITION BY grp ORDER BY hash(key || ?)) "
            f"<= CASE WHEN grp = 'kept' THEN ? ELSE ? END ORDER BY grp = 'kept' DESC, grp, hash(key || ?)",
            [str(c.seed), c.listen_kept, c.listen_per_reason, str(c.seed)])
        names = [d[0] for d in rows.description]
        by: dict[str, list[dict]] = {}
        for r in rows.fetchall():
            d = dict(zip(names, r))
            by.setdefault(d["grp"], []).append(d)
        out, i = [], 0
        while any(i < len(v) for v in by.values()):
            out += [(g, v[i]) for g, v in by.items() if i < len(v)]
            i += 1
        return out

    def _clips(self, samples: list[tuple[str, dict]]) -> dict[str, Clip | str]:
        """key -> Clip, or the reason it has none."""
        c = self.cfg
        out: dict[str, Clip | str] = {}
        by_shard: dict[str, list[str]] = {}
        for _, s in samples:
            if s["kept"] and s["shard_path"]:
                by_shard.setdefault(s["shard_path"], []).append(s["key"])
        for rel, keys in by_shard.items():
            try:
                found, err = read_flac_members(self.out / rel, keys), f"not in its shard {rel}"
            except (OSError, tarfile.TarError) as e:  # the page says so; the report goes on
                found, err = {}, f"shard {rel} unreadable: {e}"
            for k in keys:
                try:
                    out[k] = flac_clip(found[k], c.clip_seconds) if k in found else err
                except (sf.LibsndfileError, RuntimeError, ValueError) as e:  # a corrupt member
                    out[k] = f"{rel}: {k}.flac unreadable: {e}"
        for _, s in samples:
            if s["key"] in out:
                continue
            if s["kept"]:
                out[s["key"]] = "a kept segment without a shard row"
                continue
            try:
                out[s["key"]] = source_clip(s["source_path"], s["start"], s["end"], c.clip_seconds)
            except ClipError as e:
                out[s["key"]] = str(e)
        return out

    def listen(self, budget: int) -> tuple[str, int, int, int]:
        """The listen section within ``budget`` bytes -> (html, clips embedded, left out, unavailable)."""
        c = self.cfg
        samples = self._samples()
        clips = self._clips(samples)
        cards: dict[str, list[str]] = {}
        n_in = n_out = n_na = 0
        for grp, s in samples:
            clip = clips[s["key"]]
            if isinstance(clip, Clip):
                uri = f"data:{clip.mime};base64," + base64.b64encode(clip.data).decode("ascii")
                if len(uri) + 2000 <= budget:
                    budget -= len(uri)
                    player = (f'<audio controls preload="metadata" data-key="{esc(s["key"])}" data-group="{esc(grp)}" '
                              f'src="{uri}"></audio>')
                    player += f" <span class='note'>(first {clip.seconds:g} s)</span>" if clip.cut else ""
                    n_in += 1
                else:
                    player = f"<p class='note'>audio left out: the page is capped at {c.max_bytes / 1e6:g} MB</p>"
                    n_out += 1
            else:
                player = f"<p class='note'>no audio: {esc(clip)}</p>"
                n_na += 1
            card = (f'<div class="card" data-group="{esc(grp)}"><div class="meta"><b>{esc(s["key"])}</b> · '
                    f'{esc(s["speaker"])} · {fmt(s["duration"])} s · {esc(s["language"])} ({fmt(s["language_prob"])})'
                    + (f' · <span class="drop">{esc(s["drop_reason"])}</span>' if s["drop_reason"] else "")
                    + f'</div><p class="text">{esc(s["text"]) or "<i>(no text)</i>"}</p><div class="figs">'
                    f'SNR {fmt(s["snr_db"], 1)} dB · {fmt(s["rate"], 1)} chars/s · logprob {fmt(s["logprob"])} · '
                    f'no-speech {fmt(s["no_speech"])} · compression {fmt(s["compression"])} · clipping {fmt(s["clipping"], 4)} · '
                    f'overlap {fmt(s["overlap"])}</div>{player}</div>')
            budget -= len(card.encode())
            cards.setdefault(grp, []).append(card)
        body = '<section id="listen"><h2>Listen</h2>'
        body += (f"<p class='note'>A random sample (seed {c.seed}) of {c.listen_kept} kept segments and {c.listen_per_reason} "
                 f"of each drop reason. Kept audio comes from the shards; dropped segments are in no shard, so theirs is "
                 f"cut from the source file when it can be read here. Clips are Ogg/Vorbis 24 kHz, cut to "
                 f"{c.clip_seconds:g} s, and added only while the page stays under {c.max_bytes / 1e6:g} MB: "
                 f"<b>{n_in} clips embedded, {n_out} left out by the size cap, {n_na} without audio</b>.</p>")
        for grp, cs in cards.items():
            body += f"<h3>{esc(grp)}</h3><div class='cards'>{''.join(cs)}</div>"
        return body + "</section>", n_in, n_out, n_na

    # -- page ------------------------------------------------------------------------------
    def build(self, path: str | os.PathLike | None = None) -> ReportResult:
        t0 = time.time()
        path = Path(path) if path else self.out / DEFAULT_NAME
        timings: dict[str, float] = {}

        def timed(name, fn, *args):
            t = time.time()
            try:
                return fn(*args)
            finally:
                timings[name] = round(time.time() - t, 3)

        figures = ('<section id="figures"><h2>Segments</h2>' + timed("durations", self.durations)
                   + timed("speakers", self.speakers) + timed("languages", self.languages)
                   + timed("drop_reasons", self.outcomes) + timed("quality", self.distributions) + "<h2>Sources</h2>"
                   + timed("sources", self.sources) + "</section>")
        rest = timed("summary", self.summary) + figures + timed("tokens", self.tokens)
        budget = self.cfg.max_bytes - len(rest.encode()) - len(_HEAD) - 4000
        listen, n_in, n_out, n_na = timed("listen", self.listen, budget)
        nav = ('<nav><a href="#summary">corpus</a> · <a href="#figures">segments</a> · <a href="#listen">listen</a>'
               + (' · <a href="#tokens">tokens</a>' if "id=\"tokens\"" in rest else "") + "</nav>")
        title = f"voxforge report: {esc(self.out.resolve().name)}"
        page = (_HEAD.replace("{title}", title) + f"<h1>{title}</h1><p class='note'>Built "
                f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} from {esc(self.out.resolve())}/manifests by "
                f"<code>python -m manifests report</code>; rebuilt from the manifests each time.</p>" + nav + rest
                + listen + "</body></html>")
        data = page.encode("utf-8")
        atomic_write_bytes(path, data)
        return ReportResult(path=path, bytes=len(data), seconds=time.time() - t0, clips=n_in, clips_left_out=n_out,
                            clips_unavailable=n_na, figures=self.figures, timings=timings)


def _ts(col: str) -> str:
    """A UTC timestamp column as text (fetching TIMESTAMPTZ values would need pytz)."""
    return f"strftime({col} AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S UTC')"


def _details(label: str, js: str | None) -> str:
    if not js:
        return "–"
    try:
        text = json.dumps(json.loads(js), indent=1, sort_keys=True)
    except (TypeError, ValueError):
        text = js
    return f"<details><summary>{label}</summary><pre>{esc(text)}</pre></details>"


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .5em;vertical-align:top;text-align:left}
table.kv td:first-child{font-weight:600}table.wrap td{word-break:break-all}
figure.plot{margin:1em 0}figure.plot svg{max-width:100%;height:auto}figcaption,.note{font-size:.85em;color:#555}
pre{max-height:20em;overflow:auto;font-size:.8em;background:#f8f9fa;padding:.5em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:.6em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em;font-size:.85em}.card audio{width:100%}
.card .text{margin:.3em 0}.card .figs{color:#555;font-size:.9em}.drop{color:#c92a2a;font-weight:600}
nav{position:sticky;top:0;background:#fff;padding:.3em 0;border-bottom:1px solid #eee}
</style></head><body>
"""


def build_report(out: str | os.PathLike, path: str | os.PathLike | None = None,
                 cfg: ReportConfig | None = None) -> ReportResult:
    """Write the report of ``out`` to ``path`` (default ``OUT/report.html``), from scratch."""
    return Report(out, cfg).build(path)


def after_job(out: str | os.PathLike) -> str:
    """Rebuild the report at the end of a job; -> the summary's last line. Never raises: a report
    that cannot be built must not fail the job that wrote the data."""
    import logging

    rebuild = f"python -m manifests report {out}"
    try:
        r = build_report(out)
    except Exception as e:  # noqa: BLE001 - reported on the summary line
        logging.getLogger("report").warning("report not built: %s: %s", type(e).__name__, e, exc_info=True)
        return f"report: not built ({type(e).__name__}: {e}); build it with: {rebuild}"
    return (f"report: open {r.path} in a browser ({r.bytes / 1e6:.1f} MB, {r.seconds:.1f} s to build; "
            f"rebuild: {rebuild})")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    d = ReportConfig()
    ap = argparse.ArgumentParser(prog="python -m manifests report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output directory of an ingest run (holds manifests/)")
    ap.add_argument("--output", default=None, help=f"the page to write (default OUT/{DEFAULT_NAME})")
    ap.add_argument("--max-mb", type=float, default=d.max_bytes / 1e6, help="page size cap, MB (default %(default)s)")
    ap.add_argument("--listen-kept", type=int, default=d.listen_kept, help="kept segments to listen to (default %(default)s)")
    ap.add_argument("--listen-per-reason", type=int, default=d.listen_per_reason,
                    help="dropped segments to listen to per drop reason (default %(default)s)")
    ap.add_argument("--clip-seconds", type=float, default=d.clip_seconds, help="clips are cut to this (default %(default)s)")
    ap.add_argument("--top-speakers", type=int, default=d.top_speakers, help="speakers drawn by name (default %(default)s)")
    ap.add_argument("--seed", type=int, default=d.seed, help="which segments are sampled (default %(default)s)")
    a = ap.parse_args(argv)
    try:
        cfg = ReportConfig(top_speakers=a.top_speakers, listen_kept=a.listen_kept, listen_per_reason=a.listen_per_reason,
                           clip_seconds=a.clip_seconds, max_bytes=int(a.max_mb * 1e6), seed=a.seed)
        r = build_report(a.out, a.output, cfg)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {r.path}: {r.bytes / 1e6:.2f} MB, {r.figures} figures, {r.clips} clips "
          f"({r.clips_left_out} left out by the {cfg.max_bytes / 1e6:g} MB cap, {r.clips_unavailable} without audio), "
          f"{r.seconds:.1f} s")
    return 0
