"""The steps of `lahis reproduce`, each a function of the run, its settings and the LAHIS scores.

Every step stores what the findings need per item (per-text losses, per-item correctness, per-output
off-target labels, per-item log-odds, per-completion LCB outcomes), so the statistics are computed from the
stored results without running the model again."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Optional

from ...core.errors import LahisError
from .config import LcbSettings, OffTargetSettings, PplSettings, ScoringSettings, TransferSettings, XquadSettings
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
    # merge the per-language rows into one ppl_cross result (each language has its own random draws)
    first = per_x[xs[0]]
    merged = {k: v for k, v in first.items()
              if k not in ("languages", "baseline", "masked", "random", "random_heads", "comparisons")}
    merged["languages"] = xs
    for part in ("baseline", "random", "random_heads", "comparisons"):
        merged[part] = {x: per_x[x][part][x] for x in xs if x in per_x[x][part]}
    merged["masked"] = {y: {x: per_x[x]["masked"][y][x] for x in xs} for y in first["masked_languages"]}
    return merged


# ====================================================================== 3. xquad
def _xquad_step(run: _Run, xs: XquadSettings, s: ScoringSettings, scores: dict, scores_fp: str,
                data: Optional[str], seed: int) -> dict:
    from ...corpora.xquad import XQUAD_LANGS, check_lang, load_qa, reference_split
    from ...eval.evaluate import outcomes
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
                                               batch_size=xs.batch_size, random_masks=xs.random_masks)
            return {"summary": report.summary, "comparisons": report.comparisons,
                    "heads": {kind: trained_heads(m) for kind, m in masks.items()}, "n_heads": n,
                    "train_items": len(train), "test_items": len(test),
                    "test_ids": [test[0].get("id"), test[-1].get("id")],
                    "items": {name: outcomes(report.records, name)["accuracy"] for name in report.summary}}

        key = {"scores": scores_fp, "settings": dataclasses.asdict(xs), "lang": lang, "seed": seed,
               "data": data}
        results[lang] = run.step(f"xquad-{lang}", key, compute)
    return results


# ====================================================================== interventions (off-target, LCB, transfer)
def random_names(base: str, draws: int) -> list[str]:
    """base, base_2, base_3, ...: one name per random draw (the first keeps the single-draw name)."""
    return [base] + [f"{base}_{i + 1}" for i in range(1, draws)]


def target_interventions(spec, scores: dict, target: str, source_lang: str, k: int, scale_up: float,
                         s: ScoringSettings, seed: int, draws: int) -> dict:
    """name -> (label, HeadMask or None) for one target language: none, zero the source language's heads, scale
    the target's heads up, zero the target's heads, and `draws` draws of k random heads zeroed."""
    from ...core.mask import HeadMask
    from ...eval.ppl import random_draws

    made = {
        "none": ("no intervention", None),
        "zero_source": (f"zero {source_lang} heads", HeadMask.from_heads(spec, _specific(scores, source_lang, k, s), 0.0)),
        "scale_target": (f"x{scale_up:g} {target} heads",
                         HeadMask.from_heads(spec, _specific(scores, target, k, s), scale_up)),
        "zero_target": (f"zero {target} heads", HeadMask.from_heads(spec, _specific(scores, target, k, s), 0.0)),
    }
    heads = random_draws(spec, k, draws, seed, target)
    for i, (name, rand) in enumerate(zip(random_names("zero_random", draws), heads)):
        made[name] = (f"zero random heads{'' if i == 0 else f' #{i + 1}'}", HeadMask.from_heads(spec, rand, 0.0))
    return made


def _mask_heads(mask) -> list:
    return [] if mask is None else [[l, h, float(mask.values[l, h])] for l, h in mask.changed_heads()]


def _nan_to_none(v):
    v = float(v) if isinstance(v, (int, float)) or hasattr(v, "item") else v  # numpy scalars -> JSON numbers
    return None if isinstance(v, float) and math.isnan(v) else v


# ====================================================================== 4. off-target
PLOT_LABELS = {"none": "none", "zero_source": "zero source heads", "scale_target": "scale target heads up",
               "zero_target": "zero target heads", "zero_random": "zero random heads"}


def _lm_eval_metrics(results: dict, task: str) -> dict:
    return {k.split(",")[0]: _nan_to_none(v) for k, v in results["results"][task].items()
            if k.endswith(",none") and "_stderr" not in k}


def _off_target_step(run: _Run, o: OffTargetSettings, s: ScoringSettings, scores: dict, scores_fp: str,
                     data: Optional[str], seed: int) -> dict:
    from tqdm.auto import tqdm

    from ...core.errors import require

    require("lm_eval", "eval", "the off-target step of `lahis reproduce`")  # tasks were checked by _check_languages
    results: dict = {}
    task_manager = None
    names = ["none", "zero_source", "scale_target", "zero_target"] + random_names("zero_random", o.random_draws)
    todo = [(t, name) for t in o.languages for name in names]
    bar = tqdm(todo, desc="off-target (language x intervention)", unit="run")
    for target, name in bar:
        bar.set_postfix_str(f"{target} {name}")

        def compute(target=target, name=name) -> dict:
            nonlocal task_manager
            import lm_eval
            from lm_eval.tasks import TaskManager

            from ...integrations.lm_eval.models import LahisHFLM
            from ...integrations.lm_eval.runner import tasks_dir

            spec = run.spec
            k = _one_percent(spec, o.heads)
            label, mask = target_interventions(spec, scores, target, o.source_lang, k, o.scale_up, s, seed,
                                               o.random_draws)[name]
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
            out = {"label": label, "heads": _mask_heads(mask), "tasks": {}}
            for t, task in zip(o.tasks, tasks):
                samples = sorted(res["samples"][task], key=lambda x: x["doc_id"])
                out["tasks"][t] = {"metrics": _lm_eval_metrics(res, task),
                                   "doc_ids": [x["doc_id"] for x in samples],
                                   "outputs": [x["resps"][0][0] for x in samples],
                                   # per output: 1 off-target, 0 on target, None when its language is undecided
                                   "off_target": [_nan_to_none(x["off_target_rate"]) for x in samples]}
            return out

        key = {"scores": scores_fp, "settings": dataclasses.asdict(o), "target": target,
               "intervention": name, "seed": seed, "data": data}
        results.setdefault(target, {})[name] = run.step(f"off_target-{target}-{name}", key, compute)
    bar.close()
    return results


# ====================================================================== 5. transfer
def transfer_interventions(spec, scores: dict, l1: str, l2: str, k: int, scale_up: float, s: ScoringSettings,
                           seed: int, draws: int) -> dict:
    """The Alice probe's interventions: none, x scale_up language 1's heads, zero language 2's heads, and each
    random draw both scaled and zeroed (the two controls)."""
    from ...core.mask import HeadMask
    from ...eval.ppl import random_draws

    made = {"none": None,
            f"x{scale_up:g} {l1} heads": HeadMask.from_heads(spec, _specific(scores, l1, k, s), scale_up),
            f"zero {l2} heads": HeadMask.from_heads(spec, _specific(scores, l2, k, s), 0.0)}
    for i, rand in enumerate(random_draws(spec, k, draws, seed, f"{l1}-{l2}")):
        tag = "" if i == 0 else f" #{i + 1}"
        made[f"x{scale_up:g} random heads{tag}"] = HeadMask.from_heads(spec, rand, scale_up)
        made[f"zero random heads{tag}"] = HeadMask.from_heads(spec, rand, 0.0)
    return made


def _transfer_step(run: _Run, tr: TransferSettings, s: ScoringSettings, scores: dict, scores_fp: str,
                   seed: int) -> dict:
    results = {}
    for l1, l2 in tr.pairs:  # checked by _check_languages

        def compute(l1=l1, l2=l2) -> dict:
            from ...eval.transfer import alice_probe

            spec = run.spec
            interventions = transfer_interventions(spec, scores, l1, l2, _one_percent(spec, tr.heads), tr.scale_up,
                                                   s, seed, tr.random_draws)
            return alice_probe(run.model, run.tok, l1, l2, interventions, n=tr.items, seed=seed,
                               batch_size=tr.batch_size, progress=True)

        key = {"scores": scores_fp, "settings": dataclasses.asdict(tr), "pair": [l1, l2], "seed": seed}
        results[f"{l1}-{l2}"] = run.step(f"transfer-{l1}-{l2}", key, compute)
    return results


# ====================================================================== 6. lcb
def lcb_prompts(tokenizer, rows: list[dict], task: str, lang: str, shots: int, data: Optional[str],
                chat: Optional[bool] = None) -> tuple[list[str], bool]:
    """The benchmark's prompts as the model sees them: its chat template when it has one (and `chat` is not
    False), else the benchmark's few-shot base-model format ("Q: ...\nA: ..." turns ending in "A:"). Returns
    (prompts, whether the chat template was used)."""
    from ...corpora.lcb import base_model_prompt, chat_turns

    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    out = []
    for r in rows:
        turns = chat_turns(r["prompt"], task, lang, shots=shots, data_dir=data)
        out.append(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
                   if use_chat else base_model_prompt(turns))
    return out, use_chat


def _lcb_step(run: _Run, c: LcbSettings, s: ScoringSettings, scores: dict, scores_fp: str, data: Optional[str],
              seed: int) -> dict:
    from ...core.control import apply_head_mask
    from ...core.lm import greedy_generate
    from ...corpora.lcb import load_lcb
    from ...eval.lcb import NEXT_TURN, lcb_completion, lcb_metrics

    results: dict = {}
    names = ["none", "zero_source", "scale_target"] + random_names("zero_random", c.random_draws)
    for lang in c.languages:
        rows = load_lcb(c.task, lang, data, sources=c.sources)
        rows = rows[:c.limit] if c.limit else rows
        for name in names:
            def compute(lang=lang, name=name, rows=rows) -> dict:
                spec = run.spec
                label, mask = target_interventions(spec, scores, lang, c.source_lang, _one_percent(spec, c.heads),
                                                   c.scale_up, s, seed, c.random_draws)[name]
                prompts, chat = lcb_prompts(run.tok, rows, c.task, lang, c.shots, data, c.chat_template)
                with apply_head_mask(run.model, mask) if mask is not None else contextlib.nullcontext():
                    # a chat template writes its own BOS: the tokenizer must not add a second one
                    completions = greedy_generate(run.model, run.tok, prompts, max_new_tokens=c.max_new_tokens,
                                                  batch_size=c.batch_size, progress=True, stop=[NEXT_TURN],
                                                  add_special_tokens=not chat)
                judged = [lcb_completion(t, lang) for t in completions]
                return {"label": label, "heads": _mask_heads(mask), "metrics": lcb_metrics(completions, lang),
                        "sources": [r["source"] for r in rows], "completions": completions,
                        # per completion: line-level pass 1/0, None when skipped (no line of >= 5 tokens)
                        "line_pass": [None if j["skipped"] else float(not j["line_error"]) for j in judged],
                        "word_pass": [None if j.get("word_error") is None else float(not j["word_error"])
                                      for j in judged]}

            key = {"scores": scores_fp, "settings": dataclasses.asdict(c), "lang": lang, "intervention": name,
                   "seed": seed, "data": data}
            results.setdefault(lang, {})[name] = run.step(f"lcb-{lang}-{name}", key, compute)
    return results
