"""The audit's PNG charts, in % like every table: audit.png (each row's on-target, off-target and undetermined
shares), compare.png (each comparison's change in the off-target rate, A and B named) and the LCB chart. Every
chart says in its caption what one bar or point counts; an interval that is not defined (a mean over sources,
nothing to count) is drawn without an error bar and said to be so, never as a zero-width bar."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from .rates import CONFIDENCE, row_name

COLORS = {"on": "#2e7d32", "off": "#c62828", "und": "#9e9e9e", "lpr": "#1565c0", "wpr": "#6a1b9a"}
_ERR = {"elinewidth": 0.8, "capsize": 2, "ecolor": "#212121"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def _bars(ax, y: np.ndarray, values: Sequence[float | None], cis: Sequence, color: str, label: str,
          height: float, undefined_label: str | None = None) -> bool:
    """Horizontal bars in % with Wilson error bars where the interval is defined; bars without one are hatched
    (and get no error bar). Returns whether any bar had no interval."""
    values = [None if v is None else 100.0 * v for v in values]
    keep = [i for i, v in enumerate(values) if v is not None]
    with_ci = [i for i in keep if cis[i] is not None]
    without = [i for i in keep if cis[i] is None]
    if with_ci:
        vals = np.array([values[i] for i in with_ci])
        lo = np.array([100.0 * cis[i][0] for i in with_ci])
        hi = np.array([100.0 * cis[i][1] for i in with_ci])
        ax.barh(y[with_ci], vals, height=height, color=color, label=label,
                xerr=np.maximum(np.vstack([vals - lo, hi - vals]), 0.0), error_kw=_ERR)
    if without:
        ax.barh(y[without], [values[i] for i in without], height=height, color=color, hatch="///",
                edgecolor="white", label=None if with_ci else label)
    return bool(without)


def plot_audit(report: dict, path: Path) -> None:
    """audit.png: per row (run / group / expected language) three bars, the on-target, off-target and undetermined
    shares of its outputs in %, with 95% Wilson intervals; the most frequent wrong languages at the right; rows
    that fail the --max_off_target gate in red."""
    plt = _plt()
    rows = report["rows"]
    names = [f"{row_name(r)}  (n={r['n']})" for r in rows]
    height = 2.2 + 0.6 * len(rows)  # inches: caption, axis and legend below, three bars per row
    fig, ax = plt.subplots(figsize=(9, height))
    y = np.arange(len(rows))[::-1].astype(float)  # first row on top
    bar = 0.26
    for offset, key, label, color in ((bar, "on_target", "on-target share", COLORS["on"]),
                                      (0.0, "off_target", "off-target share", COLORS["off"]),
                                      (-bar, "undetermined", "undetermined share", COLORS["und"])):
        _bars(ax, y + offset, [r[f"{key}_share"] for r in rows], [r.get(f"{key}_share_ci") for r in rows], color,
              label, bar)
    for yi, r in zip(y, rows):
        if r["top_wrong"]:
            ax.text(101, yi, ", ".join(lang for lang, _ in r["top_wrong"]), va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    gate = report.get("gate")
    if gate:
        failed = {(f.get("run"), f["group"], f["expected"]) for f in gate["failed"]}
        for tick, r in zip(ax.get_yticklabels(), rows):
            if (r.get("run"), r["group"], r["expected"]) in failed:
                tick.set_color(COLORS["off"])
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the row's outputs (right: the most frequent wrong languages)", fontsize=9)
    conf = f"{100 * report.get('confidence', CONFIDENCE):g}%"
    caption = (f"One bar: the share of a row's n outputs that are in the expected language, in another one, or "
               f"undetermined ({report['backend']}); error bars: {conf} Wilson intervals"
               + ("; red rows fail the off-target gate" if gate else "") + ".")
    ax.set_title("\n".join(textwrap.wrap(caption, 110)), fontsize=8, loc="left")
    fig.suptitle("Language of the outputs vs the expected language", fontsize=10, x=0.01, ha="left")
    # below the x label, outside the axes: a legend never covers a bar
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.55 / max(height - 1.6, 0.6)), ncol=3, fontsize=8,
              frameon=False)
    fig.savefig(path, dpi=120, format="png", bbox_inches="tight")
    plt.close(fig)


def plot_compare(report: dict, path: Path) -> None:
    """compare.png: one panel per comparison, titled with what A and B are; per expected language (and all of
    them) the change in off-target rate B - A in percentage points with its paired interval and p."""
    plt = _plt()
    comps = report["comparisons"]
    sizes = [max(1, len([r for r in c["comparison"]["rows"] if r["change"] is not None])) for c in comps]
    height = 1.4 + sum(1.1 + 0.35 * n for n in sizes)
    fig, axes = plt.subplots(len(comps), 1, figsize=(8, height), squeeze=False,
                             gridspec_kw={"height_ratios": sizes})
    for ax, comp in zip(axes[:, 0], comps):
        c = comp["comparison"]
        rows = [r for r in c["rows"] if r["change"] is not None]
        y = np.arange(len(rows))[::-1].astype(float)
        ax.axvline(0, color="#616161", linewidth=0.8, linestyle="--")
        for yi, r in zip(y, rows):
            v = 100 * r["change"]
            color = COLORS["off"] if v > 0 else COLORS["on"] if v < 0 else COLORS["und"]
            lo, hi = 100 * r["change_ci"][0], 100 * r["change_ci"][1]
            ax.errorbar([v], [yi], xerr=[[max(v - lo, 0.0)], [max(hi - v, 0.0)]], fmt="o", color=color,
                        ecolor=color, capsize=3, markersize=5)
        from .report import p_text

        ax.set_yticks(y, [f"{r['expected']}  ({r['n_pairs']} pairs, p {p_text(r['p_value'])})" for r in rows],
                      fontsize=8)
        ax.set_xlim(-100, 100)
        title = f"A = {comp['a']}\nB = {comp['b']}".replace("`", "")
        ax.set_title("\n".join(textwrap.shorten(line, 100, placeholder="...") for line in title.splitlines()),
                     fontsize=8, loc="left")
    method = comps[0]["comparison"]["method"].split(",")[0] if comps else ""
    axes[-1, 0].set_xlabel(f"change in off-target rate, B - A (percentage points; {100 * CONFIDENCE:g}% {method})",
                           fontsize=9)
    caption = ("One point: the change in the off-target rate from A to B over the items both answered in an "
               "identifiable language (pairs); right of 0: B is more often off-target.")
    fig.suptitle("\n".join(textwrap.wrap(caption, 100)), fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png", bbox_inches="tight")
    plt.close(fig)


def plot_lcb(report: dict, path: Path) -> None:
    """The LCB chart: one panel per model and task; per language the LPR and WPR (the benchmark's pass rates) and
    the whole-text on-target share, in %. Intervals where the figure is one proportion; a language's mean over
    several sources has none and is drawn hatched, without an error bar; no bar where nothing was counted."""
    from .report import f1

    plt = _plt()
    panels = [(entry["model"], task, t) for entry in report["lcb"]["models"] for task, t in entry["tasks"].items()]
    sizes = [max(1, len(t["per_language"])) for _, _, t in panels]
    height = 2.0 + sum(1.2 + 0.55 * n for n in sizes)
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, height), squeeze=False, gridspec_kw={"height_ratios": sizes})
    bar = 0.26
    undefined = False
    for ax, (model, task, t) in zip(axes[:, 0], panels):
        langs = list(t["per_language"])
        y = np.arange(len(langs))[::-1].astype(float)
        per = [t["per_language"][lang] for lang in langs]

        def rate(m, key):  # no bar for the benchmark's 1.0 of a rate with nothing to count
            return None if m.get(f"{key}_n") == 0 else m[key]

        series = (
            (bar, "LPR (line-level pass rate)", COLORS["lpr"], [rate(m, "lpr") for m in per], [m["lpr_ci"] for m in per]),
            (0.0, "WPR (word-level pass rate)", COLORS["wpr"], [rate(m, "wpr") for m in per], [m["wpr_ci"] for m in per]),
            (-bar, "on-target share (whole text)", COLORS["on"], [m["whole_text"]["on_target_share"] for m in per],
             [m["whole_text"]["on_target_share_ci"] for m in per]),
        )
        for offset, label, color, values, cis in series:
            undefined |= _bars(ax, y + offset, values, cis, color, label, bar)
        ax.set_yticks(y, [f"{lang} ({t['per_language'][lang]['whole_text']['n']})" for lang in langs], fontsize=8)
        ax.set_xlim(0, 100)
        o = t["overall"]
        head = f"{model} / {task}" if model is not None else task
        ax.set_title(textwrap.shorten(f"{head}: LPR {f1(o['lpr'])}, WPR {f1(o['wpr'])}, LCPR {f1(o['lcpr'])}",
                                      100, placeholder="..."), fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("% (language label: completions)", fontsize=9)
    handles: dict = {}
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if undefined:
        from matplotlib.patches import Patch

        handles["hatched: a mean over sources, no interval defined"] = Patch(facecolor="white", edgecolor="#424242",
                                                                             hatch="///")
    caption = (f"One bar: a language's pass rate or share of its completions, in % ({report['lcb']['identifier']}); "
               f"error bars: {100 * report.get('confidence', CONFIDENCE):g}% Wilson intervals where the figure is one "
               "proportion; no bar: not measured (WPR is for ar hi ja ko ru zh only) or nothing to count.")
    fig.suptitle("Language Confusion Benchmark\n" + "\n".join(textwrap.wrap(caption, 110)), fontsize=9, x=0.01,
                 ha="left")
    fig.tight_layout(rect=(0, 0.5 / height, 1, 1))  # room below the last panel for the legend
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=2, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.savefig(path, dpi=120, format="png", bbox_inches="tight")
    plt.close(fig)
