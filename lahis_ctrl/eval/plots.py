"""PNG plots of LAHIS scores: per-language heatmaps, top-head overlap between languages, per-layer
distribution of language-specific heads, and the ppl-cross matrix. matplotlib (Agg), written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..core.errors import LahisError


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    from ..core.fileio import atomic_path

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise LahisError(f"plots are written as PNG; got '{path.suffix}' ({path})")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_heatmaps(scores_by_lang: Mapping[str, object], path, q: float = 0.96) -> Path:
    """One heatmap per language (layers down, heads across), all on ONE colour scale with one labelled colour bar,
    so a colour means the same score in every panel; the heads a language keeps (above its q quantile, the
    classification's rule) are outlined."""
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    from ..lahis.heads import _matrices, kept_heads

    mats, facts = _matrices(scores_by_lang)
    plt = _plt()
    n = len(mats)
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    layers, heads = next(iter(mats.values())).shape
    w = max(2.8, min(6.5, 0.18 * heads + 1.8))
    h = max(2.5, min(8.0, 0.16 * layers + 1.0))
    vmin = min(float(t.min()) for t in mats.values())
    vmax = max(float(t.max()) for t in mats.values())
    if vmax <= vmin:
        vmax = vmin + 1e-12  # a constant matrix: one colour, still a valid scale
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols + 1.2, h * rows + 0.6), squeeze=False,
                             constrained_layout=True)
    for ax, (lang, t) in zip(axes.flat, mats.items()):
        im = ax.imshow(t.numpy(), aspect="auto", cmap="viridis", interpolation="nearest", vmin=vmin, vmax=vmax)
        kept, _ = kept_heads(t, q)
        for layer, head in kept:  # the language's kept heads, outlined
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="#ff1744", linewidth=1.4))
        ax.set_title(f"{lang} ({len(kept)} kept)")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    bar = fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
    bar.set_label("LAHIS score (importance x negative fraction), one scale for every language")
    name = facts.get("model_name", "")
    fig.suptitle(f"LAHIS scores{' of ' + name if name else ''}: one cell = one head's score for that language; "
                 f"red outline = kept by the language (above its q={q:g} quantile)", fontsize="medium")
    return _save(fig, path)


def overlap_matrix(scores_by_lang: Mapping[str, object], top: Optional[int] = None, q: float = 0.96) -> tuple[list[str], torch.Tensor, int]:
    """(languages, [langs, langs] count of shared top heads, top): top-`top` heads, or those above the q quantile."""
    from ..lahis.heads import _matrices, kept_heads

    mats, _ = _matrices(scores_by_lang)
    sets = {}
    for lang, t in mats.items():
        if top is None:
            sets[lang] = set(kept_heads(t, q)[0])
        else:
            order = torch.sort(-t.flatten(), stable=True).indices[:top]
            sets[lang] = {(int(i) // t.shape[1], int(i) % t.shape[1]) for i in order}
    langs = list(mats)
    m = torch.tensor([[len(sets[a] & sets[b]) for b in langs] for a in langs], dtype=torch.float32)
    return langs, m, top if top is not None else -1


def plot_overlap(scores_by_lang: Mapping[str, object], path, top: Optional[int] = None, q: float = 0.96) -> Path:
    """Heatmap of how many top heads each pair of languages shares (diagonal: each language's set size)."""
    langs, m, _ = overlap_matrix(scores_by_lang, top, q)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(langs), 0.8 + 0.6 * len(langs)))
    im = ax.imshow(m.numpy(), cmap="Blues")
    ax.set_xticks(range(len(langs)), langs)
    ax.set_yticks(range(len(langs)), langs)
    for i in range(len(langs)):
        for j in range(len(langs)):
            ax.text(j, i, int(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_title(f"heads kept by both languages ({'top ' + str(top) if top else f'above the q={q} quantile'});\n"
                 "diagonal: heads the language keeps", fontsize="small")
    from matplotlib.ticker import MaxNLocator

    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.locator = MaxNLocator(integer=True)  # counts of heads: no half-heads on the scale
    bar.update_ticks()
    bar.set_label("shared heads")
    return _save(fig, path)


def plot_layer_distribution(classification, path) -> Path:
    """Distinct heads per layer, stacked by kind: language-general heads, heads specific to one language (coloured
    by that language) and heads specific to several languages (kept by two or more, but fewer than min_rep). A head
    counts once however many languages keep it, so a bar never exceeds the layer's heads."""
    from matplotlib.ticker import MaxNLocator

    layers, per_layer = classification["shape"][0], classification["shape"][1]
    langs = list(classification["languages"])
    owners: dict[tuple[int, int], list[str]] = {}
    for lang in langs:
        for s in classification["per_language"][lang]["specific"]:
            owners.setdefault((s["layer"], s["head"]), []).append(lang)
    general = {(g["layer"], g["head"]) for g in classification["general"]}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * layers + 3.5), 3.8))
    bottom = [0] * layers

    def stack(counts, **style):
        drawn = [i for i, c in enumerate(counts) if c]  # a zero-height bar would still draw its edge
        if drawn:
            ax.bar(drawn, [counts[i] for i in drawn], bottom=[bottom[i] for i in drawn], **style)
        for i, c in enumerate(counts):
            bottom[i] += c

    stack([sum(1 for (l, _) in general if l == layer) for layer in range(layers)], label="general (kept by "
          f">= {classification['min_rep']} languages)", color="lightgray", edgecolor="black", hatch="//")
    for k, lang in enumerate(langs):
        counts = [sum(1 for (l, _), who in owners.items() if l == layer and who == [lang]) for layer in range(layers)]
        if any(counts):
            stack(counts, label=f"specific to {lang} only", color=f"C{k % 10}")
    shared = [sum(1 for (l, _), who in owners.items() if l == layer and len(who) > 1) for layer in range(layers)]
    if any(shared):
        stack(shared, label="specific to 2+ languages", color="white", edgecolor="black", hatch="..")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"distinct heads (of {per_layer} per layer)")
    ax.set_xticks(range(layers))
    ax.set_ylim(0, max(1, max(bottom)) + 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Kept heads per layer (q={classification['q']}, min_rep={classification['min_rep']}): one bar "
                 "segment = heads of that kind in the layer, each head counted once", fontsize="small")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside, not on bars
    fig.tight_layout()
    return _save(fig, path)


def plot_grouped_bars(data: Mapping[str, Mapping[str, float]], path, title: str, ylabel: str,
                      errors: Optional[Mapping[str, Mapping[str, tuple]]] = None, caption: Optional[str] = None) -> Path:
    """Grouped bars: one group per key of `data` (e.g. a language), one bar per series inside it (e.g. a mask).

    Series are coloured consistently across groups; a series missing from a group leaves a gap. `errors`
    ({group: {series: (low, high)}}, in the bars' unit) draws each bar's interval as an error bar; with `errors`,
    a bar without an interval is hatched and the legend says its interval is not defined (never a zero-width bar).
    `caption`: what one bar counts, under the title. The legend sits beside the axes, never over a bar.
    """
    from matplotlib.patches import Patch

    groups = list(data)
    if not groups:
        raise LahisError(f"nothing to plot for {path}: no groups")
    series = list(dict.fromkeys(name for g in groups for name in data[g]))
    plt = _plt()
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(groups) * max(1, len(series)) * 0.45 + 2), 3.8))
    undefined = False
    for i, name in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ys = [data[g].get(name, float("nan")) for g in groups]
        spans = [errors.get(g, {}).get(name) if errors is not None else None for g in groups]
        known = [k for k, (y, sp) in enumerate(zip(ys, spans)) if y == y and sp is not None and None not in sp
                 and sp[0] == sp[0] and sp[1] == sp[1]]
        bars = ax.bar(xs, ys, width=width, label=name, color=f"C{i % 10}")
        if known:  # matplotlib wants distances from the bar's top
            ax.errorbar([xs[k] for k in known], [ys[k] for k in known],
                        yerr=[[max(0.0, ys[k] - spans[k][0]) for k in known],
                              [max(0.0, spans[k][1] - ys[k]) for k in known]],
                        fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        if errors is not None:
            for k, bar in enumerate(bars):
                if k not in known and ys[k] == ys[k]:
                    bar.set_hatch("///")
                    undefined = True
    ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 6 else 0, ha="right" if len(groups) > 6 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title + (f"\n{caption}" if caption else ""), fontsize="medium" if not caption else "small")
    ax.axhline(0, color="black", linewidth=0.5)
    # plain swatches: a series whose first bar is hatched must not look hatched in the legend
    handles, labels = [Patch(facecolor=f"C{i % 10}") for i in range(len(series))], list(series)
    if undefined:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///"))
        labels.append("hatched: no interval defined")
    ax.legend(handles, labels, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


def plot_against_draws(data: Mapping[str, tuple], path, title: str, ylabel: str) -> Path:
    """Per group: each random head set's effect as a grey dot, the target heads' effect as a red marker with its 95%
    CI against no intervention, and the placebo set (a random set put through the same test) as a hollow marker.

    data: {group: (Comparison dict of the target effect, [effect of each random draw], placebo effect or None)}.
    """
    groups = list(data)
    if not groups:
        raise LahisError(f"nothing to plot for {path}: no groups")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.5, 0.8 * len(groups) + 2.5), 4.2), constrained_layout=True)
    for i, g in enumerate(groups):
        cmp, draws, placebo = (tuple(data[g]) + (None,))[:3]
        ax.scatter([i + 0.15] * len(draws), draws, s=12, color="grey", alpha=0.7,
                   label="random head sets (one dot each)" if i == 0 else None)
        if placebo is not None:
            ax.scatter([i + 0.3], [placebo], s=30, facecolors="none", edgecolors="C0",
                       label="placebo set" if i == 0 else None)
        if cmp.get("effect") is not None:
            low, high = cmp["ci"]
            ax.errorbar([i - 0.1], [cmp["effect"]], yerr=[[cmp["effect"] - low], [high - cmp["effect"]]], fmt="o",
                        color="C3", capsize=3, label="the language's own heads (95% CI vs none)" if i == 0 else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


def _wrap(text: str, width: int = 58) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def plot_findings(found, path) -> Path:
    """A forest plot of a report's findings, one panel per unit (points, nats/token, log-odds, ...): each effect
    with its 95% CI (thick) and the interval at the family level the verdict reads (thin), coloured by verdict; the
    shaded side of zero is the side the claim predicts, and a diamond marks the paper's value where it gives one.
    Claims are written out in full."""
    units = list(dict.fromkeys(f["unit"] for f in found if f.get("effect") is not None))
    if not units:
        raise LahisError(f"nothing to plot for {path}: no finding has an effect")
    colours = {"holds": "C2", "does not hold": "C3", "inconclusive": "grey"}
    plt = _plt()
    rows = {u: [f for f in found if f["unit"] == u and f.get("effect") is not None] for u in units}
    labels = {id(f): _wrap(f"{f['claim']} [{f.get('reading', '')}]") for fs in rows.values() for f in fs}
    heights = {u: sum(0.25 + 0.17 * labels[id(f)].count("\n") for f in fs) + 0.5 for u, fs in rows.items()}
    fig, axes = plt.subplots(len(units), 1, figsize=(11.5, 1.2 + sum(heights.values())),
                             gridspec_kw={"height_ratios": [heights[u] for u in units]}, squeeze=False,
                             constrained_layout=True)
    for ax, unit in zip(axes[:, 0], units):
        fs = rows[unit]
        xs = [v for f in fs for v in (f["effect"], *(f["ci"] or []), *((f.get("ci_family") or {}).get("ci") or []),
                                      f.get("paper_effect")) if v is not None]
        span = max(abs(min(xs + [0.0])), abs(max(xs + [0.0]))) * 1.1 or 1.0
        for i, f in enumerate(fs):
            null = f.get("null_value", 0.0) or 0.0
            side = (null, span) if f["direction"] > 0 else (-span, null)
            ax.fill_betweenx([i - 0.4, i + 0.4], *side, color="C2", alpha=0.07, linewidth=0)
            family = (f.get("ci_family") or {}).get("ci") or [None, None]
            if None not in family:
                ax.plot(family, [i, i], color=colours[f["verdict"]], linewidth=1, alpha=0.8)
            low, high = f["ci"]
            if low is not None and high is not None:
                ax.plot([low, high], [i, i], color=colours[f["verdict"]], linewidth=3.5)
            ax.plot([f["effect"]], [i], "o", color=colours[f["verdict"]], markersize=6)
            if f.get("paper_effect") is not None:
                first = not any(g.get("paper_effect") is not None for g in fs[:i])
                ax.plot([f["paper_effect"]], [i], "D", color="black", markersize=6, fillstyle="none",
                        label="the paper's value" if first else None)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_xlim(-span, span)
        ax.set_ylim(len(fs) - 0.5, -0.5)
        ax.set_yticks(range(len(fs)), [labels[id(f)] for f in fs], fontsize="x-small")
        ax.set_xlabel(f"effect ({unit}); shaded: the side the claim predicts", fontsize="small")
        if any(f.get("paper_effect") is not None for f in fs):
            ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside: never over a bar
    fig.suptitle("findings: green holds, red does not hold, grey inconclusive; thick bar 95% CI, thin bar the "
                 "family-level CI the verdict reads", fontsize="small")
    return _save(fig, path)


def plot_ppl_cross(result: dict, path, metric: str = "corpus_ppl") -> Path:
    """Heatmap of perplexity relative to the unmasked model: rows = text language, columns = zeroed heads."""
    xs, ys = result["languages"], result["masked_languages"]
    cols = ys + ["random"]
    rel = torch.tensor([[result["masked"][y][x][metric] / result["baseline"][x][metric] for y in ys]
                        + [result["random"][x][metric] / result["baseline"][x][metric]] for x in xs])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(cols), 1.0 + 0.6 * len(xs)))
    im = ax.imshow(rel.numpy(), cmap="Reds")
    ax.set_xticks(range(len(cols)), [f"{c} top-{result['k']}" if c != "random" else f"random {result['k']}" for c in cols],
                  rotation=30, ha="right")
    ax.set_yticks(range(len(xs)), xs)
    for i in range(len(xs)):
        for j in range(len(cols)):
            ax.text(j, i, f"{rel[i, j]:.2f}", ha="center", va="center", fontsize="small")
    ax.set_xlabel("heads zeroed")
    ax.set_ylabel("text language")
    ax.set_title(f"one cell: {metric} of the row's texts with the column's heads zeroed,\ndivided by the unmasked "
                 "model's (1 = no change)", fontsize="small")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(f"{metric} / unmasked")
    return _save(fig, path)
