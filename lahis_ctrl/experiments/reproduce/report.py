"""The report folder of `lahis reproduce`: report.md, the README section, the copy under docs/."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from .findings import _mean, _task_families, _verdict
from .steps import PLOT_LABELS

README_START = "<!-- lahis reproduce: start -->"
README_END = "<!-- lahis reproduce: end -->"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _tables(results: dict) -> dict[str, str]:
    from ...lahis.heads import format_classification
    from ...eval.ppl import format_table as ppl_table

    t = {}
    if results.get("scores"):
        c = results["scores"]["classification"]
        lines = ["| language | texts | tokens | language-specific heads (best first) |", "|---|---:|---:|---|"]
        for lang, d in c["per_language"].items():
            heads = ", ".join(f"L{x['layer']}H{x['head']}" for x in d["specific"]) or "none"
            lines.append(f"| {lang} | {results['scores']['texts'][lang]} | {results['scores']['tokens'][lang]} | {heads} |")
        general = ", ".join(f"L{g['layer']}H{g['head']} ({'/'.join(g['languages'])})" for g in c["general"]) or "none"
        t["scores"] = "\n".join(lines) + f"\n\nLanguage-general heads (kept by >= {c['min_rep']} of " \
                                         f"{len(c['languages'])} languages): {general}\n\n```\n{format_classification(c)}\n```"
    if results.get("ppl"):
        p = results["ppl"]
        t["ppl"] = ("Corpus perplexity:\n\n" + ppl_table(p, "corpus_ppl") + "\n\nMean of per-text perplexity "
                    "(the reference's measure):\n\n" + ppl_table(p, "mean_text_ppl"))
    if results.get("xquad"):
        lines = ["| language | mask | accuracy % | EM % | F1 % | trained heads (layer, head, scale) |",
                 "|---|---|---:|---:|---:|---|"]
        for lang, r in results["xquad"].items():
            for name in ("original", "random", "lahis"):
                s = r["summary"][name]
                heads = "" if name == "original" else ", ".join(f"L{l}H{h}={v:.2f}" for l, h, v in r["heads"][name])
                lines.append(f"| {lang} | {name} | {100 * s['accuracy']:.1f} | {100 * s['exact_match']:.1f} | "
                             f"{100 * s['f1']:.1f} | {heads} |")
        means = {name: _mean(r["summary"][name]["accuracy"] for r in results["xquad"].values())
                 for name in ("original", "random", "lahis")}
        lines.append("\nMean accuracy over the languages: " + ", ".join(f"{n} {_pct(v)}%" for n, v in means.items()) + ".")
        any_r = next(iter(results["xquad"].values()))
        t["xquad"] = (f"{any_r['train_items']} training items x epochs from the reference train split, "
                      f"{any_r['test_items']} held-out test items per language, {any_r['n_heads']} trainable heads.\n\n"
                      + "\n".join(lines))
    if results.get("off_target"):
        ot = results["off_target"]
        tasks = _task_families(ot)
        blocks = []
        for task in tasks:
            main = "contains" if task == "xquad_xling" else "chrf"
            lines = [f"| language | intervention | off-target % (decided) | undetermined % | {main} |",
                     "|---|---|---:|---:|---:|"]
            for lang, per in ot.items():
                for name, r in per.items():
                    m = r["tasks"].get(task, {}).get("metrics", {})
                    val = m.get(main)
                    shown = "n/a" if val is None else (f"{val:.1f}" if main == "chrf" else f"{100 * val:.1f}")
                    lines.append(f"| {lang} | {r['label']} | {_pct(m.get('off_target_rate'))} | "
                                 f"{_pct(m.get('undetermined_rate'))} | {shown} |")
            blocks.append(f"**{task}_<lang>**\n\n" + "\n".join(lines))
        t["off_target"] = "\n\n".join(blocks)
    if results.get("transfer"):
        from ...eval.transfer import format_probe_table

        t["transfer"] = "\n\n".join(format_probe_table(r) for r in results["transfer"].values())
    return t


def _plots(results: dict, out: Path, scores: Optional[dict]) -> dict[str, str]:
    from ...eval import plots

    made = {}
    d = out / "plots"
    if scores:
        made["heatmaps"] = plots.plot_heatmaps(scores, d / "heatmaps.png")
        made["overlap"] = plots.plot_overlap(scores, d / "overlap.png")
        made["layers"] = plots.plot_layer_distribution(results["scores"]["classification"], d / "layers.png")
    if results.get("ppl"):
        made["ppl_cross"] = plots.plot_ppl_cross(results["ppl"], d / "ppl_cross.png")
    if results.get("xquad"):
        data = {lang: {name: 100 * r["summary"][name]["accuracy"] for name in ("original", "random", "lahis")}
                for lang, r in results["xquad"].items()}
        made["xquad"] = plots.plot_grouped_bars(data, d / "xquad.png", "XQuAD accuracy (held-out items)", "accuracy %")
    if results.get("off_target"):
        ot = results["off_target"]
        tasks = _task_families(ot)
        data = {}
        for task in tasks:
            for lang, per in ot.items():
                rates = {name: r["tasks"][task]["metrics"].get("off_target_rate")
                         for name, r in per.items() if task in r["tasks"]}
                # one colour per intervention across languages; an undecided rate is a gap, not 0%
                data[f"{task} {lang}"] = {PLOT_LABELS[name]: float("nan") if v is None else 100 * v
                                          for name, v in rates.items()}
        made["off_target"] = plots.plot_grouped_bars(data, d / "off_target.png",
                                                     "off-target outputs among the decided ones", "off-target %")
    if results.get("transfer"):
        data = {pair: {name: 100 * v["share_prefers_x"] for name, v in r["results"].items()}
                for pair, r in results["transfer"].items()}
        made["transfer"] = plots.plot_grouped_bars(data, d / "transfer.png",
                                                   "Alice probe: share of items preferring language 1's occupation",
                                                   "prefers X %")
    return {k: str(Path(v).relative_to(out)) for k, v in made.items()}


def render_report(results: dict, tables: dict, plots_made: dict) -> str:
    m = results["model"]
    lines = [f"# LAHIS reproduction on {m['name']}", "",
             f"lahis-ctrl {results['version']}; {m['layers']} layers x {m['heads']} heads ({m['kv_heads']} KV heads), "
             f"head_dim {m['head_dim']}; dtype {results['config']['dtype']}; data {results['config']['data'] or 'hub'}.",
             "Every number below is in `results.json`; the settings are in `config.yaml`.", "", "## Findings", "",
             "| claim (from the paper) | holds here | evidence |", "|---|---|---|"]
    for f in results["findings"]:
        lines.append(f"| {f['claim']} | {_verdict(f['holds'])} | {f['evidence']} |")
    sections = [("scores", "1. LAHIS scores: language-specific and language-general heads", ["heatmaps", "overlap", "layers"]),
                ("ppl", "2. Perplexity with language-specific heads zeroed", ["ppl_cross"]),
                ("xquad", "3. XQuAD: original vs random-heads mask vs LAHIS mask", ["xquad"]),
                ("off_target", "4. Off-target language rates under head interventions", ["off_target"]),
                ("transfer", "5. Attention transfer: the Alice occupation probe", ["transfer"])]
    for key, title, plot_names in sections:
        if key not in tables:
            continue
        lines += ["", f"## {title}", "", tables[key], ""]
        lines += [f"![{p}]({plots_made[p]})" for p in plot_names if p in plots_made]
    lines += ["", "## Steps", "", "| step | this run | seconds |", "|---|---|---:|"]
    lines += [f"| {s['step']} | {'skipped (done earlier)' if s['skipped'] else 'ran'} | {s['seconds']:.0f} |"
              for s in results["steps"]]
    return "\n".join(lines) + "\n"


def readme_section(results: dict, report_rel: str, plot_rel: Optional[str]) -> str:
    """The short results section for a README (headline numbers, the findings, one plot)."""
    m = results["model"]
    lines = [README_START, f"Produced by `lahis reproduce` on {m['name']} ({m['layers']}x{m['heads']} heads; "
             f"lahis-ctrl {results['version']}); every table and plot: [{report_rel}]({report_rel}).", ""]
    if results.get("xquad"):
        means = {n: _mean(r["summary"][n]["accuracy"] for r in results["xquad"].values())
                 for n in ("original", "random", "lahis")}
        r0 = next(iter(results["xquad"].values()))
        lines.append(f"- XQuAD accuracy, mean of {', '.join(results['xquad'])} ({r0['test_items']} held-out items each, "
                     f"{r0['n_heads']} trained heads): original {_pct(means['original'])}%, random-heads mask "
                     f"{_pct(means['random'])}%, LAHIS mask {_pct(means['lahis'])}%.")
    for f in results["findings"]:
        lines.append(f"- {_verdict(f['holds'], readme=True)}: {f['claim']} ({f['evidence']}).")
    if plot_rel:
        lines += ["", f"![ppl-cross matrix]({plot_rel})"]
    lines.append(README_END)
    return "\n".join(lines)


def publish(out: Path, readme: Path, name: str) -> Path:
    """Copy the report (report.md, results.json, config.yaml, plots/) to docs/reproduce/<name>/ beside
    `readme`, so a README can link to it from version control (the work files stay in `out`)."""
    dest = readme.parent / "docs" / "reproduce" / name
    if dest.resolve() == out.resolve():
        return dest
    (dest / "plots").mkdir(parents=True, exist_ok=True)
    for rel in ("report.md", "results.json", "config.yaml"):
        shutil.copyfile(out / rel, dest / rel)
    for png in (out / "plots").glob("*.png"):
        shutil.copyfile(png, dest / "plots" / png.name)
    return dest


def update_readme(readme: Path, section: str) -> None:
    """Replace the text between the reproduce markers in `readme` (or append it) atomically."""
    from ...core.fileio import write_text

    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if README_START in text and README_END in text:
        before, rest = text.split(README_START, 1)
        after = rest.split(README_END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text(readme, text)
