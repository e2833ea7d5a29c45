"""The five steps of `lahis reproduce`, each a function of the run, its settings and the LAHIS scores."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Optional

from ...core.errors import LahisError
from .config import OffTargetSettings, PplSettings, ScoringSettings, TransferSettings, XquadSettings
from .runner import _Run, _fingerprint, _model_facts, _one_percent


# ====================================================================== 1. scores
def _scores_step(run: _Run, s: ScoringSettings, source: str, seed: int) -> dict:
    from ...lahis.heads import classify_heads
    from ...lahis.scoring import score_languages

    def compute() -> dict:
        scores = score_languages(run.model, run.tok, s.languages, source=source, n=s.texts, mode=s.mode,
                                 max_length=s.max_length, batch_size=s.batch_size, seed=seed,
                                 out_dir=run.work / "scores", progress=True)
        c = classify_heads(scores, q=s.q, min_rep=s.min_rep)
        return {"files": {lang: str(run.work / "scores" / f"{lang}.safetensors") for lang in scores},
                "texts": {lang: sc.num_texts for lang, sc in scores.items()},
                "tokens": {lang: sc.num_tokens for lang, sc in scores.items()},
                "classification": c.to_json(), "model": _model_facts(run.spec)}

    key = {"model": run.model_name, "dtype": run.dtype, "settings": dataclasses.asdict(s), "source": source,
           "seed": seed}
    files_exist = lambda result: all(Path(p).is_file() for p in result["files"].values())  # noqa: E731
    return run.step("scores", key, compute, still_valid=files_exist) | {"fingerprint": _fingerprint(key)}


def _specific(scores: dict, lang: str, k: int, s: ScoringSettings) -> list[tuple[int, int]]:
    from ...lahis.heads import top_specific_heads

    if lang not in scores:
        raise LahisError(f"language '{lang}' has no LAHIS scores: add it to scoring.languages ({', '.join(scores)})")
    return top_specific_heads(scores, lang, k, q=s.q, min_rep=s.min_rep)


# ====================================================================== 2. ppl
def _ppl_step(run: _Run, p: PplSettings, s: ScoringSettings, source: str, scores: dict, scores_fp: str,
              seed: int) -> dict:
    from ...corpora.texts import load_texts
    from ...eval.ppl import ppl_cross

    xs = p.languages or list(s.languages)
    per_x = {}
    for x in xs:
        def compute(x=x) -> dict:
            passages = load_texts(source, x, n=None, seed=None, tokenizer=run.tok, passage_tokens=p.max_length)
            held_out = passages[s.texts:s.texts + p.texts]  # the scored passages are the first s.texts
            if not held_out:
                raise LahisError(f"no held-out {x} passages left after the {s.texts} scored ones in {source}; "
                                 "lower scoring.texts or ppl.texts")
            return ppl_cross(run.model, run.tok, {x: held_out}, scores, k=p.k, random_trials=p.random_trials,
                             seed=seed, q=s.q, min_rep=s.min_rep, max_length=p.max_length,
                             batch_size=p.batch_size, progress=True)

        key = {"scores": scores_fp, "settings": dataclasses.asdict(p), "x": x, "seed": seed}
        per_x[x] = run.step(f"ppl-{x}", key, compute)
    # merge the per-language rows into one ppl_cross result (the random draws are the same in every row)
    first = per_x[xs[0]]
    merged = {k: v for k, v in first.items() if k not in ("languages", "baseline", "masked", "random")}
    merged["languages"] = xs
    merged["baseline"] = {x: per_x[x]["baseline"][x] for x in xs}
    merged["random"] = {x: per_x[x]["random"][x] for x in xs}
    merged["masked"] = {y: {x: per_x[x]["masked"][y][x] for x in xs} for y in first["masked_languages"]}
    return merged


# ====================================================================== 3. xquad
def _xquad_step(run: _Run, xs: XquadSettings, s: ScoringSettings, scores: dict, scores_fp: str,
                data: Optional[str], seed: int) -> dict:
    from ...corpora.xquad import XQUAD_LANGS, check_lang, load_qa, reference_split
    from ..soft_masks import compare_soft_masks, trained_heads

    results = {}
    for lang in xs.languages:
        check_lang(lang, XQUAD_LANGS)

        def compute(lang=lang) -> dict:
            if lang not in scores:
                raise LahisError(f"xquad language '{lang}' has no LAHIS scores: add it to scoring.languages")
            spec = run.spec
            n = xs.heads or max(4, int(0.02 * spec.num_layers * spec.num_heads))
            rows, split = load_qa(lang, data)
            train, test = reference_split(rows, split)
            train = train[:xs.train_items] if xs.train_items else train
            test = test[:xs.test_items] if xs.test_items else test
            report, masks = compare_soft_masks(run.model, run.tok, lang, scores[lang], train, test, n,
                                               run.work / "masks", run.work / "xquad" / lang, epochs=xs.epochs,
                                               lr=xs.lr, seed=seed, max_new_tokens=xs.max_new_tokens,
                                               batch_size=xs.batch_size)
            heads = {kind: trained_heads(m) for kind, m in masks.items()}
            return {"summary": report.summary, "heads": heads, "n_heads": n, "train_items": len(train),
                    "test_items": len(test), "test_ids": [test[0].get("id"), test[-1].get("id")]}

        key = {"scores": scores_fp, "settings": dataclasses.asdict(xs), "lang": lang, "seed": seed,
               "data": data}
        results[lang] = run.step(f"xquad-{lang}", key, compute)
    return results


# ====================================================================== 4. off-target
INTERVENTION_LABELS = {"none": "no intervention", "zero_source": "zero {src} heads", "scale_target": "x{scale} {tgt} heads",
                       "zero_target": "zero {tgt} heads", "zero_random": "zero random heads"}


PLOT_LABELS = {"none": "none", "zero_source": "zero source heads", "scale_target": "scale target heads up",
               "zero_target": "zero target heads", "zero_random": "zero random heads"}


def off_target_interventions(spec, scores: dict, target: str, source_lang: str, k: int, scale_up: float,
                             s: ScoringSettings, seed: int) -> dict:
    """name -> (label, HeadMask or None) for one target language."""
    from ...core.mask import HeadMask
    from ...eval.ppl import random_heads

    rng = random.Random(f"{seed}-{target}")
    made = {
        "none": None,
        "zero_source": HeadMask.from_heads(spec, _specific(scores, source_lang, k, s), 0.0),
        "scale_target": HeadMask.from_heads(spec, _specific(scores, target, k, s), scale_up),
        "zero_target": HeadMask.from_heads(spec, _specific(scores, target, k, s), 0.0),
        "zero_random": HeadMask.from_heads(spec, random_heads(spec.num_layers, spec.num_heads, k, rng), 0.0),
    }
    return {name: (INTERVENTION_LABELS[name].format(src=source_lang, tgt=target, scale=f"{scale_up:g}"), m)
            for name, m in made.items()}


def _lm_eval_metrics(results: dict, task: str) -> dict:
    out = {}
    for k, v in results["results"][task].items():
        if k.endswith(",none") and "_stderr" not in k:
            v = float(v) if isinstance(v, (int, float)) or hasattr(v, "item") else v  # numpy scalars -> JSON numbers
            out[k.split(",")[0]] = None if (isinstance(v, float) and math.isnan(v)) else v
    return out


def _off_target_step(run: _Run, o: OffTargetSettings, s: ScoringSettings, scores: dict, scores_fp: str,
                     data: Optional[str], seed: int) -> dict:
    from tqdm.auto import tqdm

    from ...core.errors import require

    require("lm_eval", "eval", "the off-target step of `lahis reproduce`")  # tasks were checked by _check_languages
    results: dict = {}
    task_manager = None
    todo = [(t, name) for t in o.languages for name in INTERVENTION_LABELS]
    bar = tqdm(todo, desc="off-target (language x intervention)", unit="run")
    for target, name in bar:
        bar.set_postfix_str(f"{target} {name}")

        def compute(target=target, name=name) -> dict:
            nonlocal task_manager
            import lm_eval
            from lm_eval.tasks import TaskManager

            from ...integrations.lm_eval.runner import tasks_dir
            from ...integrations.lm_eval.models import LahisHFLM

            spec = run.spec
            k = _one_percent(spec, o.heads)
            label, mask = off_target_interventions(spec, scores, target, o.source_lang, k, o.scale_up, s, seed)[name]
            if task_manager is None:  # only this package's tasks: indexing lm-eval's ~15k YAMLs takes ~15 s
                task_manager = TaskManager(include_path=str(tasks_dir()), include_defaults=False,
                                           metadata={"data_dir": str(data)} if data else None)
            tasks = [f"{t}_{target}" for t in o.tasks]
            lm = LahisHFLM(pretrained=run.model, tokenizer=run.tok, batch_size=o.batch_size, mask=mask)
            try:
                res = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=o.limit,
                                              gen_kwargs=f"max_gen_toks={o.max_gen_toks}", bootstrap_iters=0,
                                              log_samples=True, task_manager=task_manager)
            finally:
                lm.remove_mask()  # the fold is undone: the next intervention starts from the original weights
            out = {"label": label, "heads": [] if mask is None else [[l, h, float(mask.values[l, h])]
                                                                     for l, h in mask.changed_heads()],
                   "tasks": {}}
            for t, task in zip(o.tasks, tasks):
                out["tasks"][t] = {"metrics": _lm_eval_metrics(res, task),
                                   "outputs": [x["resps"][0][0] for x in res["samples"][task]]}
            return out

        key = {"scores": scores_fp, "settings": dataclasses.asdict(o), "target": target,
               "intervention": name, "seed": seed, "data": data}
        results.setdefault(target, {})[name] = run.step(f"off_target-{target}-{name}", key, compute)
    bar.close()
    return results


# ====================================================================== 5. transfer
def _transfer_step(run: _Run, tr: TransferSettings, s: ScoringSettings, scores: dict, scores_fp: str,
                   seed: int) -> dict:
    results = {}
    for l1, l2 in tr.pairs:  # checked by _check_languages

        def compute(l1=l1, l2=l2) -> dict:
            from ...core.mask import HeadMask
            from ...eval.ppl import random_heads
            from ...eval.transfer import alice_probe

            spec = run.spec
            k = _one_percent(spec, tr.heads)
            rng = random.Random(f"{seed}-{l1}-{l2}")
            rand = random_heads(spec.num_layers, spec.num_heads, k, rng)
            interventions = {
                "none": None,
                f"x{tr.scale_up:g} {l1} heads": HeadMask.from_heads(spec, _specific(scores, l1, k, s), tr.scale_up),
                f"zero {l2} heads": HeadMask.from_heads(spec, _specific(scores, l2, k, s), 0.0),
                f"x{tr.scale_up:g} random heads": HeadMask.from_heads(spec, rand, tr.scale_up),
                "zero random heads": HeadMask.from_heads(spec, rand, 0.0),
            }
            return alice_probe(run.model, run.tok, l1, l2, interventions, n=tr.items, seed=seed,
                               batch_size=tr.batch_size, progress=True)

        key = {"scores": scores_fp, "settings": dataclasses.asdict(tr), "pair": [l1, l2], "seed": seed}
        results[f"{l1}-{l2}"] = run.step(f"transfer-{l1}-{l2}", key, compute)
    return results
