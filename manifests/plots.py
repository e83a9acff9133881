"""The report's figures: matplotlib (Agg) rendered to inline SVG strings.

Text is drawn as paths (``svg.fonttype = 'path'``), so a page needs no font and no network.
Each function takes plain numbers (seconds, counts, dB...) and returns one ``<svg>`` element.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: the driver of a cluster job has neither

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

KEPT, DROPPED, THRESHOLD = "#2b8a3e", "#c92a2a", "#e67700"
STYLE = {
    "svg.fonttype": "path",  # glyphs as paths: no font files needed to open the page
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
_XML_HEAD = re.compile(r"^.*?(?=<svg)", re.S)


def figure(ncols: int = 1, width: float = 7.5, height: float = 2.8):
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False)
    return fig, list(axes[0])


_count = iter(range(1 << 62))


def to_svg(fig) -> str:
    """The figure as one ``<svg>`` element (XML prolog and DOCTYPE removed), then closed.

    Element ids are salted with a per-process counter: unique among the figures of one page
    (they share one HTML id space), the same from one build to the next."""
    buf = io.StringIO()
    with plt.rc_context({**STYLE, "svg.hashsalt": f"voxforge-report-{next(_count)}"}):
        fig.tight_layout()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return _XML_HEAD.sub("", buf.getvalue(), count=1)


def empty_note(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def _bins(values: np.ndarray, n: int = 40) -> np.ndarray:
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n + 1)


def histogram(ax, kept: np.ndarray, dropped: np.ndarray | None, xlabel: str,
              thresholds: Sequence[tuple[float, str]] = (), log: bool = False, label: str = "kept") -> None:
    """Stacked histogram of kept (and dropped) values with the filter thresholds as dashed lines.

    ``label`` names the first series (``kept``, or e.g. ``sources`` when there is no dropped one)."""
    kept = kept[np.isfinite(kept)]
    dropped = dropped[np.isfinite(dropped)] if dropped is not None else None
    both = np.concatenate([kept, dropped]) if dropped is not None else kept
    if not len(both):
        empty_note(ax)
        ax.set_xlabel(xlabel)
        return
    # The axis spans the values and the thresholds, except that a side stops at 0.5 / 99.5 % of the
    # values when a few lie far beyond (a 0.01 s segment has a speech rate of thousands of chars/s,
    # which would squash every other bar into one); those are drawn in the edge bins and counted.
    finite_th = [t for t, _ in thresholds if np.isfinite(t)]
    lo, hi = float(both.min()), float(both.max())
    p_lo, p_hi = np.percentile(both, [0.5, 99.5])
    span = max(p_hi - p_lo, 1e-9)
    # a side whose extreme lies far beyond its percentile is cut there; a side without outliers is not
    lo, hi = (p_lo if lo < p_lo - span else lo), (p_hi if hi > p_hi + span else hi)
    lo, hi = min([lo, *finite_th]), max([hi, *finite_th])
    bins = _bins(np.array([lo, hi]))
    lo, hi = bins[0], bins[-1]
    n_out = int(((both < lo) | (both > hi)).sum())
    kept = np.clip(kept, lo, hi)
    dropped = np.clip(dropped, lo, hi) if dropped is not None else None
    if n_out:
        xlabel += f"\n({n_out} off-axis, in the edge bins)"
    data, colors, labels = [kept], [KEPT], [f"{label} ({len(kept)})"]
    if dropped is not None:
        data, colors, labels = [kept, dropped], [KEPT, DROPPED], [f"{label} ({len(kept)})", f"dropped ({len(dropped)})"]
    ax.hist(data, bins=bins, stacked=True, color=colors, label=labels, log=log)
    for t, name in thresholds:
        if np.isfinite(t):
            ax.axvline(t, color=THRESHOLD, ls="--", lw=1.2)
            ax.annotate(f"{name} = {t:g}", (t, 1), xycoords=("data", "axes fraction"), rotation=90,
                        ha="right", va="top", fontsize=7, color=THRESHOLD)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("segments")
    # above the axes: inside, it would hide the thresholds' labels
    ax.legend(fontsize=7, ncol=2, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)


def barh(ax, labels: Sequence[str], values: Sequence[float], xlabel: str,
         colors: Sequence[str] | None = None, notes: Sequence[str] | None = None) -> None:
    """Horizontal bars, first label on top; ``notes`` are written at the end of each bar."""
    if not len(values):
        empty_note(ax)
        return
    y = np.arange(len(values))
    ax.barh(y, values, color=colors if colors is not None else KEPT)
    ax.set_yticks(y, [str(label) for label in labels], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", visible=False)
    if notes:
        for yi, v, n in zip(y, values, notes):
            ax.annotate(n, (v, yi), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)


def stacked_bars(ax, xlabels: Sequence[str], series: dict[str, Sequence[float]], colors: dict[str, str],
                 ylabel: str) -> None:
    """Vertical bars, one per x label, each stacked from ``series`` (name -> values per label)."""
    if not len(xlabels):
        empty_note(ax)
        return
    x = np.arange(len(xlabels))
    bottom = np.zeros(len(xlabels))
    for name, vals in series.items():
        vals = np.asarray(vals, dtype=float)
        ax.bar(x, vals, bottom=bottom, label=name, color=colors.get(name))
        bottom += vals
    ax.set_xticks(x, xlabels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")


def reason_colors(names: Sequence[str]) -> dict[str, str]:
    """Kept in green, each drop reason its own colour (stable for a given order of names)."""
    # tab20 without its two greens (4, 5): green means kept
    palette = [matplotlib.colors.to_hex(c) for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (4, 5)]
    out = {"kept": KEPT}
    for i, n in enumerate(n for n in names if n != "kept"):
        out[n] = palette[i % len(palette)]
    return out
