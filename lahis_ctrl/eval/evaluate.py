"""Evaluate head masks on extractive QA (XQuAD or the embedded sample): greedy generation, the paper's
accuracy and SQuAD EM/F1, several masks in one run.

Each mask (None = the original model) generates up to K new tokens per item with batched left-padded
greedy decoding (lahis_ctrl.generation.greedy_generate). The continuation is decoded from the
generated token ids only, so the prompt (which contains the answer) can never count as a correct answer.

Files written under `out_dir` (all atomically; generations are kept per mask and batch, so an
interrupted run resumes where it stopped):
  * examples.jsonl - one line per (mask, item): id, lang, expected_lang, mask, prompt_style, generation,
    gold (all gold answers), correct (paper accuracy), exact_match, f1. The off-target audit reads
    `generation` and `expected_lang`;
  * results.json - per mask: n, accuracy, exact_match, f1 (in [0, 1]) and the settings, and each mask's paired
    comparison with the first one (effect, 95% CI, p: exact McNemar for accuracy/EM, sign-flip for F1);
  * results.md - the same as a table (accuracies with Wilson intervals).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..core.artifacts import Checkpoint, fingerprint
from ..core.errors import LahisError
from ..core.fileio import write_json, write_text
from ..corpora.prompts import format_prompt
from .qa_metrics import score_all

log = logging.getLogger(__name__)

METRIC_NAMES = ("accuracy", "exact_match", "f1")


@dataclass
class EvalReport:
    """What evaluate_masks returns: a summary per mask, the paired comparisons, and every per-example record."""

    lang: str
    summary: dict[str, dict[str, float]]
    records: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    out_dir: Optional[Path] = None
    comparisons: dict[str, dict[str, dict]] = field(default_factory=dict)
    model_identity: Optional[dict[str, Any]] = None  # the weights evaluated (core.identity)

    def table(self) -> str:
        return format_table(self.summary, title=f"XQuAD-style QA, {self.lang}", comparisons=self.comparisons)

    def to_json(self) -> dict[str, Any]:
        return {"lang": self.lang, "settings": self.settings, "summary": self.summary,
                "comparisons": self.comparisons,
                **({"model_identity": self.model_identity} if self.model_identity else {})}


def outcomes(records: Sequence[Mapping], mask: str) -> dict[str, list[float]]:
    """Per-item outcomes of one mask, in item order: {"accuracy": 0/1, "exact_match": 0/1, "f1": [0, 1]}."""
    rows = [r for r in records if r["mask"] == mask]
    return {"accuracy": [float(r["correct"]) for r in rows], "exact_match": [float(r["exact_match"]) for r in rows],
            "f1": [float(r["f1"]) for r in rows]}


def compare_masks(records: Sequence[Mapping], baseline: str, seed: int = 0) -> dict[str, dict[str, dict]]:
    """Each mask against `baseline` on the same items: {mask: {metric: Comparison dict}} (paired bootstrap CI;
    exact McNemar p for accuracy and EM, sign-flip p for F1)."""
    from .stats import paired_difference

    base = outcomes(records, baseline)
    names = list(dict.fromkeys(r["mask"] for r in records))
    return {name: {k: paired_difference(base[k], v, seed=seed, unit="share of items").to_dict()
                   for k, v in outcomes(records, name).items()}
            for name in names if name != baseline}


def accuracy_interval(row: Mapping[str, float]) -> tuple[float, float]:
    """The 95% Wilson interval of a summary row's accuracy (a share of its `n` items)."""
    from .stats import wilson_interval

    n = int(row["n"])
    return wilson_interval(round(row["accuracy"] * n), n)


def format_table(summary: Mapping[str, Mapping[str, float]], title: str = "",
                 comparisons: Optional[Mapping[str, Mapping[str, Mapping]]] = None) -> str:
    """A Markdown table: mask | n | accuracy [95% Wilson CI] | EM | F1 (percent), and each mask's paired change in
    accuracy against the first row (95% CI, p)."""
    from .stats import format_effect

    names = list(summary)
    lines = [f"### {title}", ""] if title else []
    lines += ["| mask | n | accuracy % [95% CI] | exact match % | F1 % | accuracy vs " + (names[0] if names else "-")
              + " (points, 95% CI, p) |", "|---|---:|---:|---:|---:|---|"]
    for i, name in enumerate(names):
        s = summary[name]
        n = int(s["n"])
        low, high = accuracy_interval(s)
        c = (comparisons or {}).get(name, {}).get("accuracy")
        delta = "" if i == 0 else (format_effect(c, scale=100, digits=1) if c else
                                   f"{100 * (s['accuracy'] - summary[names[0]]['accuracy']):+.1f}")
        lines.append(f"| {name} | {n} | {100 * s['accuracy']:.1f} [{100 * low:.1f}, {100 * high:.1f}] | "
                     f"{100 * s['exact_match']:.1f} | {100 * s['f1']:.1f} | {delta} |")
    return "\n".join(lines) + "\n"


def _mask_digest(mask) -> str:
    if mask is None:
        return "none"
    return hashlib.sha256(mask.values.numpy().tobytes()).hexdigest()[:16]


def evaluate_masks(model, tokenizer, lang: str, masks: Mapping[str, Any], rows: Sequence[dict], style: str = "paper",
                   max_new_tokens: int = 10, batch_size: int = 8, out_dir: str | os.PathLike | None = None,
                   progress: bool = False, overwrite: bool = False) -> EvalReport:
    """Generate answers for `rows` under each mask and score them.

    Args:
        model, tokenizer: a transformers causal LM and its tokenizer.
        lang: the language of the rows and the prompt (an XQuAD language).
        masks: name -> HeadMask, mask file path, or None for the original model; evaluated in order.
        rows: QA rows {id, context, question, answers{text}} (e.g. the reference test split).
        style: prompt style, "paper" or "lm_eval".
        max_new_tokens: K, the greedy continuation length (the reference: 10).
        batch_size: prompts per generate call (left padding).
        out_dir: where examples.jsonl / results.json / results.md go (and per-mask partial generations,
            so an interrupted run resumes); None keeps everything in memory.
        progress: tqdm progress bars.
        overwrite: replace generations kept in out_dir by an evaluation with other settings (without it, they are
            refused: they belong to another run).
    """
    from tqdm.auto import tqdm

    from ..core.control import apply_head_mask
    from ..core.lm import greedy_generate
    from ..core.architecture import describe
    from ..core.mask import as_mask

    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a mapping {{name: HeadMask, mask file or None}}, e.g. {{'original': None, "
                        f"'de': 'de.safetensors'}}; got a {type(masks).__name__}")
    rows = list(rows)
    if not rows:
        raise LahisError("no rows to evaluate: the evaluation split is empty")
    if not masks:
        raise LahisError("no masks to evaluate: pass at least one (None means the original model)")
    spec = describe(model)
    # validate every mask before generating anything: a wrong file fails in a second, not after an hour
    resolved = {name: (None if m is None else as_mask(m, spec)) for name, m in masks.items()}
    prompts = [format_prompt(r, lang, style) for r in rows]
    golds = [list(r["answers"]["text"]) for r in rows]
    out = Path(out_dir) if out_dir is not None else None
    settings = {"lang": lang, "style": style, "max_new_tokens": max_new_tokens, "items": len(rows),
                "model": spec.name_or_path, "first_id": rows[0].get("id"), "last_id": rows[-1].get("id")}
    # generations kept in out_dir resume only on the same weights (checked apart from the settings' fingerprint,
    # so generations of earlier versions still resume)
    from ..core.identity import model_identity

    identity = model_identity(model) if out_dir is not None else None
    if out is not None and not overwrite and (out / "results.json").is_file():
        # a finished report of another model is not replaced by accident (its generations may be gone)
        from ..core.fileio import read_json
        from ..core.identity import check_same_model

        earlier = read_json(out / "results.json", "evaluation report")
        check_same_model(earlier.get("model_identity") if isinstance(earlier, dict) else None, identity,
                         f"the evaluation in {out}", fix="choose another --out, or pass --overwrite to replace it")

    records: list[dict] = []
    summary: dict[str, dict[str, float]] = {}
    for name, mask in resolved.items():
        fp = fingerprint({**settings, "mask": _mask_digest(mask), "ids": [str(r.get("id")) for r in rows]})
        # generations are kept per mask and batch; those of another run's settings are refused unless overwrite
        ckpt = Checkpoint(out / "generations" / f"{_safe(name)}.json", fp, "evaluation checkpoint",
                          replace=overwrite, identity=identity) if out is not None else None
        found = ckpt.load() if ckpt is not None else None
        generations = [d["generation"] for d in found[1]["generations"]] if found else []
        bar = tqdm(total=len(rows), initial=len(generations), desc=f"evaluate {name}", unit="item",
                   disable=not progress)
        try:
            for start in range(len(generations), len(rows), batch_size):
                chunk = prompts[start:start + batch_size]
                if mask is None or mask.is_identity:
                    new = greedy_generate(model, tokenizer, chunk, max_new_tokens=max_new_tokens, batch_size=batch_size)
                else:
                    with apply_head_mask(model, mask):
                        new = greedy_generate(model, tokenizer, chunk, max_new_tokens=max_new_tokens,
                                              batch_size=batch_size)
                generations.extend(new)
                bar.update(len(new))
                if ckpt is not None:  # checkpoint after every batch
                    ckpt.save({}, {"generations": [{"id": rows[i].get("id"), "generation": g}
                                                   for i, g in enumerate(generations)]})
        finally:
            bar.close()
        totals = dict.fromkeys(METRIC_NAMES, 0.0)
        for row, gen, gold in zip(rows, generations, golds):
            metrics = score_all(gen, gold)
            for k in METRIC_NAMES:
                totals[k] += metrics[k]
            records.append({"id": row.get("id"), "lang": lang, "expected_lang": lang, "mask": name,
                            "prompt_style": style, "generation": gen, "gold": gold,
                            "correct": bool(metrics["accuracy"]), "exact_match": metrics["exact_match"],
                            "f1": metrics["f1"]})
        summary[name] = {"n": len(rows), **{k: totals[k] / len(rows) for k in METRIC_NAMES}}
        log.info("%s: accuracy %.3f  EM %.3f  F1 %.3f", name, summary[name]["accuracy"],
                 summary[name]["exact_match"], summary[name]["f1"])

    comparisons = compare_masks(records, next(iter(resolved))) if len(resolved) > 1 else {}
    report = EvalReport(lang=lang, summary=summary, records=records, settings=settings, out_dir=out,
                        comparisons=comparisons, model_identity=identity)
    if out is not None:  # the three files of one report replace the previous report's together, or not at all
        from ..core.fileio import replace_together

        with replace_together(out) as staged:
            write_text(staged / "examples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            write_json(staged / "results.json", report.to_json())
            write_text(staged / "results.md", report.table())
    return report


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "mask"


def parse_mask_args(specs: Sequence[str]) -> dict[str, Optional[str]]:
    """CLI mask list -> {name: reference or None}: 'none' (the original model), 'NAME=REF' or 'REF' (named by its
    stem); a reference is a mask file, a folder or a Hub repo id (core.hub)."""
    masks: dict[str, Optional[str]] = {}
    for spec in specs:
        if spec.lower() in ("none", "original"):
            name, path = "original", None
        elif "=" in spec:
            name, path = spec.split("=", 1)
            if path.lower() == "none":
                path = None
        else:
            name, path = Path(spec).stem, spec
        if path is not None:  # a missing local file fails here; a Hub repo id is resolved when the mask loads
            from ..core.hub import parse_reference

            ref = parse_reference(path)
            if not ref.is_hub and not (ref.path.is_file() or ref.path.is_dir()):
                raise LahisError(f"mask file not found: {path} (give 'none', NAME=PATH or PATH, or a Hub repo id)")
        if name in masks:
            raise LahisError(f"two masks are named '{name}': use NAME=PATH to name them apart")
        masks[name] = path
    return masks
