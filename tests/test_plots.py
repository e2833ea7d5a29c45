"""Plots that cannot mislead: what each bar, cell or point counts is said on the plot; heads are counted once;
heatmaps share one labelled colour scale and mark the kept heads; counts get integer ticks; legends sit beside
the axes; an interval that is not defined is drawn as such, never as a zero-width error bar; the audit's charts
are in % and name A and B."""

from __future__ import annotations

import json

import matplotlib
import pytest
import torch

matplotlib.use("Agg")


@pytest.fixture
def saved(monkeypatch):
    """Every figure written, kept open for inspection."""
    import matplotlib.figure

    figures = []
    real = matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    monkeypatch.setattr("matplotlib.pyplot.close", lambda *a, **k: None)
    return figures


def _texts(fig) -> str:
    parts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_title(loc="left"), ax.get_xlabel(), ax.get_ylabel()]
        legend = ax.get_legend()
        if legend is not None:
            parts += [t.get_text() for t in legend.get_texts()]
    for legend in fig.legends:
        parts += [t.get_text() for t in legend.get_texts()]
    return " ".join(parts)


def _scores(shared=(8, 0)):
    g = torch.Generator().manual_seed(0)
    scores = {lang: torch.rand(18, 4, generator=g) for lang in ("en", "de", "es", "hi", "zh")}
    for lang in ("en", "de"):  # one head kept by two languages (fewer than min_rep): specific to both
        scores[lang][shared] = 10.0
    return scores


def _legend_beside(ax) -> bool:
    legend = ax.get_legend()
    return legend is not None and legend.get_bbox_to_anchor().transformed(ax.transAxes.inverted()).x0 >= 1.0


def test_layers_counts_each_distinct_head_once(tmp_path, saved, monkeypatch):
    from lahis_ctrl.eval.plots import plot_layer_distribution
    from lahis_ctrl.lahis.heads import classify_heads

    scores = _scores()
    c = classify_heads(scores, q=0.9)
    assert (8, 0) in c.specific("en") and (8, 0) in c.specific("de")  # two (language, head) pairs, one head
    plot_layer_distribution(c, tmp_path / "layers.png")
    (fig,) = saved
    ax = fig.axes[0]
    heights = {}
    for patch in ax.patches:
        layer = round(patch.get_x() + patch.get_width() / 2)
        heights[layer] = heights.get(layer, 0) + patch.get_height()
    distinct = {}
    for head in set(c.general_heads()) | {h for lang in c.languages for h in c.specific(lang)}:
        distinct[head[0]] = distinct.get(head[0], 0) + 1
    assert {k: v for k, v in heights.items() if v} == distinct
    assert max(heights.values()) <= 4 and heights[8] == distinct[8]
    assert all(float(t).is_integer() for t in ax.get_yticks())  # counts of heads: integer ticks
    text = _texts(fig)
    assert "distinct heads" in text and "each head counted once" in text and "specific to 2+ languages" in text
    assert _legend_beside(ax)


def test_heatmaps_share_one_labelled_scale_and_outline_the_kept_heads(tmp_path, saved):
    from matplotlib.patches import Rectangle

    from lahis_ctrl.eval.plots import plot_heatmaps
    from lahis_ctrl.lahis.heads import kept_heads

    scores = _scores()
    plot_heatmaps(scores, tmp_path / "heatmaps.png", q=0.9)
    (fig,) = saved
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == len(scores) and len({im.get_clim() for im in images}) == 1  # one colour scale
    lo, hi = images[0].get_clim()
    assert lo == pytest.approx(min(float(t.min()) for t in scores.values()))
    assert hi == pytest.approx(max(float(t.max()) for t in scores.values()))
    bars = [ax for ax in fig.axes if not ax.get_images() and ax.get_ylabel()]
    assert len(bars) == 1 and "LAHIS score" in bars[0].get_ylabel()  # one colour bar, labelled
    panels = [ax for ax in fig.axes if ax.get_images()]
    for ax, (lang, t) in zip(panels, scores.items()):
        outlined = {(round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in ax.patches if isinstance(p, Rectangle)}
        assert outlined == set(kept_heads(t, 0.9)[0]), lang
        assert all(float(x).is_integer() for x in ax.get_xticks()), lang
    assert "one cell = one head's score" in _texts(fig)


def test_bars_without_an_interval_are_said_to_have_none(tmp_path, saved, monkeypatch):
    """Error bars only where an interval exists; the other bars are hatched and the legend says why."""
    import matplotlib.axes

    from lahis_ctrl.eval.plots import plot_grouped_bars

    drawn = []
    real = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, *args, **kwargs):
        drawn.append((list(x), kwargs.get("yerr")))
        return real(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    plot_grouped_bars({"de": {"original": 0.1, "lahis": 0.2}, "es": {"original": 0.3, "lahis": 0.25}},
                      tmp_path / "bars.png", "XQuAD", "accuracy", errors={"de": {"original": (0.05, 0.2)}},
                      caption="one bar: a mask's accuracy on a language's items")
    (fig,) = saved
    ax = fig.axes[0]
    assert len(drawn) == 1 and drawn[0][1] == [[pytest.approx(0.05)], [pytest.approx(0.1)]]  # only that bar's
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 3
    text = _texts(fig)
    assert "hatched: no interval defined" in text and "one bar: a mask's accuracy" in text
    assert _legend_beside(ax)


def test_audit_charts_are_in_percent_and_name_a_and_b(tmp_path, saved):
    from lahis_ctrl.eval.audit import run_audit

    rows = []
    for mask, answers in (("none", ["Der Hund bellt laut im Garten.", "Die Katze schläft auf dem Sofa."]),
                          ("lahis", ["The dog barks loudly in the garden today.", "Die Katze schläft auf dem Sofa."])):
        rows += [{"id": i, "mask": mask, "expected_lang": "de", "generation": a} for i, a in enumerate(answers)]
    path = tmp_path / "ex.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run_audit(path, compare_by="mask")
    audit_fig, compare_fig = saved
    ax = audit_fig.axes[0]
    assert ax.get_xlim() == (0, 100) and "%" in ax.get_xlabel()
    assert [t.get_text().split("  ")[0] for t in ax.get_yticklabels()] == ["none / de", "lahis / de"]  # both
    assert "One bar: the share of a row's n outputs" in _texts(audit_fig)
    text = _texts(compare_fig)
    assert "A = mask = none in" in text and "B = mask = lahis in" in text and "One point: the change" in text


def test_findings_show_each_claims_side_the_papers_value_and_full_claims(tmp_path, saved):
    """The committed Gemma report's findings: every claim written out in full beside its row, the side of the null
    the claim predicts shaded, the paper's value marked where the claim has one, the legend beside the axes."""
    from pathlib import Path

    from lahis_ctrl.eval.plots import plot_findings

    results = json.loads((Path(__file__).resolve().parents[1] / "docs" / "reproduce" / "gemma-3-270m"
                          / "results.json").read_text())
    found = [f for f in results["findings"] if f.get("effect") is not None]
    plot_findings(found, tmp_path / "findings.png")
    (fig,) = saved
    assert "green holds, red does not hold, grey inconclusive" in _texts(fig)
    rows = []
    for ax in fig.axes:
        labels = [t.get_text().replace("\n", " ") for t in ax.get_yticklabels()]
        shaded = [p.get_paths()[0].vertices[:, 0] for p in ax.collections]
        assert len(shaded) == len(labels)
        papers = [line for line in ax.get_lines() if line.get_marker() == "D"]
        assert (ax.get_legend() is not None) == bool(papers)
        if papers:
            assert _legend_beside(ax) and "the paper's value" in _texts(fig)
        rows += [(label, xs, ax, papers) for label, xs in zip(labels, shaded)]
    assert len(rows) == len(found)
    by_label = {label: (xs, ax, papers) for label, xs, ax, papers in rows}
    for f in found:
        xs, ax, papers = by_label[f"{f['claim']} [{f['reading']}]"]  # the claim in full, never shortened
        null = f.get("null_value") or 0.0
        if f["direction"] > 0:
            assert xs.min() == pytest.approx(null) and xs.max() > null
        else:
            assert xs.max() == pytest.approx(null) and xs.min() < null
        if f.get("paper_effect") is not None:
            assert any(line.get_xdata()[0] == f["paper_effect"] for line in papers)
    assert any(f.get("paper_effect") is not None for f in found)
