"""The steps of `lahis reproduce`, each a function of the run, its settings and the LAHIS scores.

Every step stores what the findings need per item (per-text losses, per-item correctness, per-output off-target
labels and a teacher-forced proxy per document, per-item log-odds, per-completion LCB outcomes), for the target heads,
every random head set and the placebo set, so the statistics are computed from the stored results without running the
model again.

Head sets: a language's heads are its strictly specific heads (lahis.heads.STRICT_RULE); a random set has the same
size and is drawn from the heads outside the target set it is compared with (eval.ppl.DRAW_RULE). The first set drawn
for a claim is its placebo: it goes through the same test in the place of the target heads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

from ...core.errors import LahisError
from .config import LcbSettings, OffTargetSettings, PplSettings, ScoringSettings, TransferSettings, XquadSettings
from .runner import _Run, _fingerprint, _model_facts, _one_percent

# draws run in blocks of this many per stored step, so a long draw loop resumes where it stopped
DRAW_BLOCK = 200
# teacher-forced passes over many head sets (the off-target proxy, the Alice probe's random sets) batch at least this
# many short sequences, each row under its own mask: one forward per batch instead of one per head set
MANY_MASKS_BATCH = 64


# ====================================================================== 1. scores
def _scores_step(run: _Run, s: ScoringSettings, source: str, seed: int) -> dict:
    from ...lahis.heads import classify_heads
    from ...lahis.scoring import score_languages

    def compute() -> dict:
        scores = score_languages(run.model, run.tok, s.languages, source=source, n=s.texts, mode=s.mode,
                                 max_length=s.max_length, batch_size=s.batch_size, seed=seed,
                                 out_dir=run.work / "scores", progress=True, overwrite=run.force)
        c = classify_heads(scores, q=s.q, min_rep=s.min_rep)
        return {"files": {lang: str(run.work / "scores" / f"{lang}.safetensors") for lang in scores},
                "texts": {lang: sc.num_texts for lang, sc in scores.items()},
                "tokens": {lang: sc.num_tokens for lang, sc in scores.items()},
                "classification": c.to_json(), "model": _model_facts(run.spec)}

    key = {"model": run.model_name, "dtype": run.dtype, "settings": dataclasses.asdict(s), "source": source,
           "seed": seed}
    files_exist = lambda result: all(Path(p).is_file() for p in result["files"].values())  # noqa: E731
    return run.step("scores", key, compute, still_valid=files_exist) | {"fingerprint": _fingerprint(key)}


def head_sets(scores: dict, languages: Sequence[str], k: int, s: ScoringSettings) -> dict:
    """{language: HeadSet}: each language's k strictly specific heads (lahis.heads.STRICT_RULE)."""
    from ...lahis.heads import strict_specific_heads

    missing = [lang for lang in languages if lang not in scores]
    if missing:
        raise LahisError(f"language(s) {missing} have no LAHIS scores: add them to scoring.languages "
                         f"({', '.join(scores)})")
    return {lang: strict_specific_heads(scores, lang, k, q=s.q) for lang in dict.fromkeys(languages)}


def _specific(scores: dict, lang: str, k: int, s: ScoringSettings) -> list[tuple[int, int]]:
    return list(head_sets(scores, [lang], k, s)[lang].heads)


def draws_for(spec, k: int, count: int, seed: int, tag: str, exclude, placebo=None) -> list[list[tuple[int, int]]]:
    """count + 1 random sets of k heads outside `exclude`: the placebo (first; `placebo` when given, one of
    joint_placebos, which keeps the placebos of several units apart), then `count` null draws."""
    from ...eval.ppl import random_draws

    sets = random_draws(spec, k, count + 1, seed, tag, exclude=exclude)
    if placebo is not None:
        sets[0] = sorted(tuple(h) for h in placebo)
    return sets


def joint_placebos(spec, k: int, seed: int, tag: str, targets: dict) -> dict:
    """{unit: its placebo set}: no two units' placebos share a head (eval.ppl.placebo_sets)."""
    from ...eval.ppl import placebo_sets

    return placebo_sets(spec, k, seed, tag, targets)


def _without(settings, *fields: str) -> dict:
    """A settings dataclass as a step key without the fields that do not change that step's result."""
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in fields}


def _blocks(count: int) -> list[range]:
    return [range(start, min(start + DRAW_BLOCK, count)) for start in range(0, count, DRAW_BLOCK)]


# ====================================================================== 2. ppl
def _ppl_step(run: _Run, p: PplSettings, s: ScoringSettings, source: str, scores: dict, scores_fp: str,
              seed: int, draws: int) -> dict:
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
            return ppl_cross(run.model, run.tok, {x: held_out}, scores, k=p.k, random_trials=draws, seed=seed,
                             q=s.q, min_rep=s.min_rep, max_length=p.max_length, batch_size=p.batch_size,
                             progress=True)

        key = {"scores": scores_fp, "settings": dataclasses.asdict(p), "draws": draws, "x": x, "seed": seed,
               "design": "strict-heads/placebo"}
        per_x[x] = run.step(f"ppl-{x}", key, compute)
    # merge the per-language rows into one ppl_cross result (each language has its own random draws)
    first = per_x[xs[0]]
    merged = {k: v for k, v in first.items()
              if k not in ("languages", "baseline", "masked", "placebo", "random", "random_heads", "comparisons")}
    merged["languages"] = xs
    for part in ("baseline", "random", "random_heads", "comparisons"):
        merged[part] = {x: per_x[x][part][x] for x in xs if x in per_x[x][part]}
    merged["masked"] = {y: {x: per_x[x]["masked"][y][x] for x in xs} for y in first["masked_languages"]}
    merged["placebo"] = {y: {x: per_x[x]["placebo"][y][x] for x in xs} for y in first.get("placebo", {})}
    return merged


# ====================================================================== 3. xquad
def xquad_plan(spec, lang: str, lahis_heads: dict, n: int, seeds: int, draws: int, seed: int) -> list:
    """The soft masks of one language: the LAHIS mask with `seeds` training seeds ("lahis", "lahis-s1", ...), the
    placebo and `draws` random-heads masks ("random-1", ...), whose heads are drawn outside the LAHIS heads (the
    placebos of all languages apart from each other); random mask i trains with the items in the order of training
    seed i mod seeds. lahis_heads: {language: its LAHIS heads} for every XQuAD language of the run."""
    from ..soft_masks import MaskPlan

    plan = [MaskPlan("lahis" if i == 0 else f"lahis-s{i}", "top", seed, i) for i in range(seeds)]
    placebo = joint_placebos(spec, n, seed, "xquad", lahis_heads)[lang]
    for i, heads in enumerate(draws_for(spec, n, draws, seed, f"xquad-{lang}", lahis_heads[lang], placebo)):
        plan.append(MaskPlan("placebo" if i == 0 else f"random-{i}", tuple(heads), seed, i % seeds))
    return plan


def _xquad_step(run: _Run, xs: XquadSettings, s: ScoringSettings, scores: dict, scores_fp: str,
                data: Optional[str], seed: int, draws: int) -> dict:
    from ...corpora.xquad import check_lang, load_qa, reference_split
    from ...eval.evaluate import outcomes
    from ...lahis.softmask import select_heads
    from ..soft_masks import compare_soft_masks, trained_heads

    results = {}
    for lang in xs.languages:
        check_lang(lang)

        def compute(lang=lang) -> dict:
            if lang not in scores:
                raise LahisError(f"xquad language '{lang}' has no LAHIS scores: add it to scoring.languages")
            spec = run.spec
            n = xs.heads or max(4, int(0.02 * spec.num_layers * spec.num_heads))
            rows, split = load_qa(lang, data)
            train, test = reference_split(rows, split)
            test = test[:xs.test_items] if xs.test_items else test
            lahis_heads = {x: select_heads(spec, n, "top", scores[x]) for x in xs.languages}
            plan = xquad_plan(spec, lang, lahis_heads, n, xs.seeds, draws, seed)
            report, masks = compare_soft_masks(run.model, run.tok, lang, scores[lang], train, test, n,
                                               run.work / "masks", run.work / "xquad" / lang, epochs=xs.epochs,
                                               lr=xs.lr, seed=seed, max_new_tokens=xs.max_new_tokens,
                                               batch_size=xs.batch_size, plan=plan, train_items=xs.train_items)
            return {"summary": report.summary, "comparisons": report.comparisons,
                    "heads": {name: trained_heads(m) for name, m in masks.items()}, "n_heads": n,
                    "seeds": xs.seeds, "draws": draws, "epochs": xs.epochs,
                    "train_items": min(len(train), xs.train_items or len(train)), "test_items": len(test),
                    "test_ids": [test[0].get("id"), test[-1].get("id")],
                    "items": {name: outcomes(report.records, name)["accuracy"] for name in report.summary}}

        key = {"scores": scores_fp, "settings": dataclasses.asdict(xs), "draws": draws, "lang": lang, "seed": seed,
               "data": data}
        results[lang] = run.step(f"xquad-{lang}", key, compute)
    return results


# ====================================================================== interventions (off-target, LCB, transfer)
def _mask_heads(mask) -> list:
    return [] if mask is None else [[l, h, float(mask.values[l, h])] for l, h in mask.changed_heads()]


def _nan_to_none(v):
    v = float(v) if isinstance(v, (int, float)) or hasattr(v, "item") else v  # numpy scalars -> JSON numbers
    return None if isinstance(v, float) and math.isnan(v) else v


def intervention_sets(spec, scores: dict, targets: Sequence[str], source_lang: str, k: int, s: ScoringSettings,
                      seed: int, draws: int, step: str) -> dict:
    """The head sets of one intervention step: {"source": the source language's heads, "target": {T: T's heads},
    "zero_draws": the placebo + `draws` random sets zeroed in every target language (outside the source's heads, like
    the one source set they are compared with), "scale_draws": {T: the placebo + `draws` random sets outside T's heads}}.
    """
    sets = head_sets(scores, [source_lang, *targets], k, s)
    placebos = joint_placebos(spec, k, seed, f"{step}-scale", {t: sets[t].heads for t in targets})
    return {"source": list(sets[source_lang].heads), "target": {t: list(sets[t].heads) for t in targets},
            "zero_draws": draws_for(spec, k, draws, seed, f"{step}-zero", sets[source_lang].heads),
            "scale_draws": {t: draws_for(spec, k, draws, seed, f"{step}-scale-{t}", sets[t].heads, placebos[t])
                            for t in targets}}


def lazy_intervention_sets(run: _Run, scores: dict, targets: Sequence[str], source_lang: str, heads: Optional[int],
                           s: ScoringSettings, seed: int, draws: int, step: str) -> Callable[[], dict]:
    """intervention_sets of one step, computed on first use: a rerun whose units are all done never loads the model
    (the head counts come from its spec)."""
    @functools.cache
    def get() -> dict:
        spec = run.spec
        return intervention_sets(spec, scores, targets, source_lang, _one_percent(spec, heads), s, seed, draws, step)

    return get


def _masks_of(spec, sets: dict, target: str, scale_up: float, names: Sequence[str]) -> dict:
    """name -> (label, HeadMask or None) for the generated interventions of one target language."""
    from ...core.mask import HeadMask

    out = {}
    for name in names:
        if name == "none":
            out[name] = ("no intervention", None)
        elif name == "zero_source":
            out[name] = ("zero source heads", HeadMask.from_heads(spec, sets["source"], 0.0))
        elif name == "scale_target":
            out[name] = (f"x{scale_up:g} {target} heads", HeadMask.from_heads(spec, sets["target"][target], scale_up))
        elif name.startswith("zero_random_"):
            i = int(name.rsplit("_", 1)[1])
            out[name] = (f"zero random heads #{i}", HeadMask.from_heads(spec, sets["zero_draws"][i], 0.0))
        elif name.startswith("scale_random_"):
            i = int(name.rsplit("_", 1)[1])
            out[name] = (f"x{scale_up:g} random heads #{i}",
                         HeadMask.from_heads(spec, sets["scale_draws"][target][i], scale_up))
        elif name in ("zero_placebo", "scale_placebo"):
            kind = name.split("_")[0]
            heads = sets["zero_draws"][0] if kind == "zero" else sets["scale_draws"][target][0]
            out[name] = (f"{'zero' if kind == 'zero' else f'x{scale_up:g}'} placebo heads",
                         HeadMask.from_heads(spec, heads, 0.0 if kind == "zero" else scale_up))
        else:
            raise ValueError(f"unknown intervention {name!r}")
    return out


# ====================================================================== 4. off-target
PLOT_LABELS = {"none": "none", "zero_source": "zero source heads", "scale_target": "scale target heads up",
               "zero_random_1": "zero random heads #1", "zero_random_2": "zero random heads #2"}
# the proxy scores the first PROXY_TOKENS tokens of each continuation: enough to see which language the model
# continues in, without paying the LM head over whole sentences on a 262k-word vocabulary
PROXY_TOKENS = 8
PROXY_MEASURE = (f"teacher-forced language preference per document: the mean log-probability of the first "
                 f"{PROXY_TOKENS} tokens of the target-language reference minus that of the source-language text "
                 "(ntrex_en: the English sentence copied; xquad_xling: the English answer) as the continuation of the "
                 "task's own prompt; higher = more inclined to answer in the target language")


def _lm_eval_metrics(results: dict, task: str) -> dict:
    return {k.split(",")[0]: _nan_to_none(v) for k, v in results["results"][task].items()
            if k.endswith(",none") and "_stderr" not in k}


def _task_manager(data: Optional[str]):
    from lm_eval.tasks import TaskManager

    from ...integrations.lm_eval.runner import tasks_dir

    # only this package's tasks: indexing lm-eval's ~15k YAMLs takes ~15 s
    return TaskManager(include_path=str(tasks_dir()), include_defaults=False,
                       metadata={"data_dir": str(data)} if data else None)


def proxy_documents(task_manager, task: str, limit: Optional[int]) -> tuple[list[str], list[str], list[str]]:
    """(prompts, target-language continuations, source-language continuations) of a task's first `limit` documents,
    with the task's own prompt (lm-eval's doc_to_text) and target delimiter."""
    from lm_eval.tasks import get_task_dict

    t = get_task_dict([task], task_manager)[task]
    docs = list(t.eval_docs)[:limit] if limit else list(t.eval_docs)
    sep = t.config.target_delimiter
    prompts = [t.doc_to_text(d) for d in docs]
    if task.startswith("ntrex_en"):
        return prompts, [sep + d["reference"] for d in docs], [sep + d["source"] for d in docs]
    if task.startswith("xquad_xling"):
        return prompts, [sep + d["answers"]["text"][0] for d in docs], [sep + d["answers_context_lang"][0] for d in docs]
    raise LahisError(f"no off-target proxy for task '{task}'")


def language_preference(model, tok, docs: tuple, masks: Sequence, batch_size: int) -> list[list[float]]:
    """PROXY_MEASURE for each document under each mask (None = the original model): [masks][documents]. All masks'
    pairs go through one batched pass, each row under its own mask (exactly what the mask alone computes)."""
    import torch

    from ...core.architecture import describe
    from ...core.lm import continuation_logprobs

    prompts, target, source = docs
    n = len(prompts)
    shape = describe(model).shape
    scales = torch.stack([torch.ones(shape) if m is None else m.values.float() for m in masks])  # [masks, L, H]
    pairs_prompts = list(prompts) * 2 * len(masks)
    pairs_conts = (list(target) + list(source)) * len(masks)
    lp = continuation_logprobs(model, tok, pairs_prompts, pairs_conts, batch_size=batch_size, max_tokens=PROXY_TOKENS,
                               per_token=True, head_scales=scales.repeat_interleave(2 * n, dim=0))
    return [[lp[k * 2 * n + i] - lp[k * 2 * n + n + i] for i in range(n)] for k in range(len(masks))]


def _off_target_step(run: _Run, o: OffTargetSettings, s: ScoringSettings, scores: dict, scores_fp: str,
                     data: Optional[str], seed: int, draws: dict) -> dict:
    """Generated outputs (lm-eval) for none, zero source heads, x scale_up target heads and the first
    `generate_draws` random zeroed sets; the teacher-forced proxy (PROXY_MEASURE) for all of them and every random
    set. draws: {"zero": count, "scale": count}."""
    from tqdm.auto import tqdm

    from ...core.errors import require

    require("lm_eval", "eval", "the off-target step of `lahis reproduce`")  # tasks were checked by _check_languages
    results: dict = {}
    sets = lazy_intervention_sets(run, scores, o.languages, o.source_lang, o.heads, s, seed,
                                  max(draws["zero"], draws["scale"]), "off_target")

    @functools.cache
    def manager():
        return _task_manager(data)

    generated = ["none", "zero_source", "scale_target"] + [f"zero_random_{i}" for i in
                                                           range(1, min(o.generate_draws, draws["zero"]) + 1)]
    todo = [(t, name) for t in o.languages for name in generated]
    bar = tqdm(todo, desc="off-target generation (language x intervention)", unit="run")
    for target, name in bar:
        bar.set_postfix_str(f"{target} {name}")

        def compute(target=target, name=name) -> dict:
            import lm_eval

            from ...integrations.lm_eval.models import LahisHFLM

            label, mask = _masks_of(run.spec, sets(), target, o.scale_up, [name])[name]
            tasks = [f"{t}_{target}" for t in o.tasks]
            lm = LahisHFLM(pretrained=run.model, tokenizer=run.tok, batch_size=o.batch_size, mask=mask)
            try:
                res = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=o.limit,
                                              gen_kwargs=f"max_gen_toks={o.max_gen_toks}", bootstrap_iters=0,
                                              log_samples=True, task_manager=manager())
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

        # draw i is the same set whatever the number of draws (one seeded sequence), so the count is not in the key
        key = {"scores": scores_fp, "settings": _without(o, "random_draws"), "target": target, "intervention": name,
               "seed": seed, "data": data, "design": "strict-heads"}
        results.setdefault(target, {})[name] = run.step(f"off_target-{target}-{name}", key, compute)
    bar.close()
    for target in o.languages:
        results[target]["proxy"] = _proxy_steps(run, o, scores_fp, seed, data, target, draws, sets, manager)
    return results


def _proxy_steps(run: _Run, o: OffTargetSettings, scores_fp: str, seed: int, data: Optional[str], target: str,
                 draws: dict, sets: Callable, manager: Callable) -> dict:
    """{task family: {"none", "zero_source", "scale_target", "zero_placebo", "scale_placebo": [per document],
    "zero_random": [[per document] per draw], "scale_random": [...], "heads": {the four named sets}}} for one
    target language."""
    out: dict = {}
    for family in o.tasks:
        task = f"{family}_{target}"
        @functools.cache
        def docs(task=task) -> tuple:
            return proxy_documents(manager(), task, min(x for x in (o.limit, o.proxy_limit) if x)
                                   if (o.limit or o.proxy_limit) else None)

        def measure(names: Sequence[str]) -> dict:
            masks = _masks_of(run.spec, sets(), target, o.scale_up, names)
            values = language_preference(run.model, run.tok, docs(), [masks[name][1] for name in names],
                                         max(o.batch_size, MANY_MASKS_BATCH))
            return dict(zip(names, values))

        base = {"scores": scores_fp, "settings": _without(o, "random_draws", "generate_draws"), "target": target,
                "task": family, "seed": seed, "data": data, "proxy": PROXY_MEASURE}
        def fixed_sets() -> dict:
            made = measure(["none", "zero_source", "scale_target", "zero_placebo", "scale_placebo"])
            made["heads"] = {"zero_source": sets()["source"], "scale_target": sets()["target"][target],
                             "zero_placebo": sets()["zero_draws"][0], "scale_placebo": sets()["scale_draws"][target][0]}
            return made

        fixed = run.step(f"off_target-proxy-{task}", base, fixed_sets)
        entry = dict(fixed)
        for kind in ("zero", "scale"):
            values: list = []
            for block in _blocks(draws[kind]):
                names = [f"{kind}_random_{i + 1}" for i in block]
                part = run.step(f"off_target-proxy-{task}-{kind}-{block.start // DRAW_BLOCK:03d}",
                                base | {"block": [block.start, block.stop], "kind": kind},
                                lambda names=names: measure(names))
                values += [part[name] for name in names]
            entry[f"{kind}_random"] = values
        out[family] = entry
    return out


# ====================================================================== 5. transfer
def transfer_interventions(spec, scores: dict, l1: str, l2: str, k: int, scale_up: float, s: ScoringSettings,
                           seed: int, draws: int, pairs: Sequence = ()) -> dict:
    """The Alice probe's interventions: none, x scale_up language 1's heads, zero language 2's heads, and for each
    of the two the placebo and `draws` random sets of the same size (drawn outside that language's heads; the
    placebos of all `pairs` of the run apart from each other)."""
    from ...core.mask import HeadMask

    pairs = [tuple(p) for p in pairs] or [(l1, l2)]
    sets = head_sets(scores, [x for p in pairs for x in p], k, s)
    made = {"none": None,
            f"x{scale_up:g} {l1} heads": HeadMask.from_heads(spec, sets[l1].heads, scale_up),
            f"zero {l2} heads": HeadMask.from_heads(spec, sets[l2].heads, 0.0)}
    up = joint_placebos(spec, k, seed, "transfer-scale", {p: sets[p[0]].heads for p in pairs})[(l1, l2)]
    down = joint_placebos(spec, k, seed, "transfer-zero", {p: sets[p[1]].heads for p in pairs})[(l1, l2)]
    scale = draws_for(spec, k, draws, seed, f"transfer-{l1}-{l2}-scale", sets[l1].heads, up)
    zero = draws_for(spec, k, draws, seed, f"transfer-{l1}-{l2}-zero", sets[l2].heads, down)
    for i, (a, b) in enumerate(zip(scale, zero)):
        tag = "placebo heads" if i == 0 else f"random heads #{i}"
        made[f"x{scale_up:g} {tag}"] = HeadMask.from_heads(spec, a, scale_up)
        made[f"zero {tag}"] = HeadMask.from_heads(spec, b, 0.0)
    return made


def _transfer_step(run: _Run, tr: TransferSettings, s: ScoringSettings, scores: dict, scores_fp: str,
                   seed: int, draws: int) -> dict:
    from ...eval.transfer import alice_probe, probe_log_odds

    results = {}
    for l1, l2 in tr.pairs:  # checked by _check_languages
        @functools.cache
        def interventions(l1=l1, l2=l2) -> dict:
            spec = run.spec
            return transfer_interventions(spec, scores, l1, l2, _one_percent(spec, tr.heads), tr.scale_up, s, seed,
                                          draws, tr.pairs)

        def probe(names: Sequence[str], generate: bool, l1=l1, l2=l2) -> dict:
            chosen = {name: interventions()[name] for name in names}
            if generate:
                return alice_probe(run.model, run.tok, l1, l2, chosen, n=tr.items, seed=seed, batch_size=tr.batch_size,
                                   progress=True)
            # random and placebo sets: teacher-forced only, many sets per batched pass
            return probe_log_odds(run.model, run.tok, l1, l2, chosen, n=tr.items, seed=seed,
                                  batch_size=max(tr.batch_size, MANY_MASKS_BATCH), progress=True)

        key = {"scores": scores_fp, "settings": _without(tr, "random_draws"), "pair": [l1, l2], "seed": seed,
               "design": "strict-heads/placebo"}
        up = f"x{tr.scale_up:g}"
        targets = ["none", f"{up} {l1} heads", f"zero {l2} heads"]
        result = run.step(f"transfer-{l1}-{l2}", key, lambda: probe(targets, True))
        placebos = [f"{up} placebo heads", "zero placebo heads"]
        result["results"].update(run.step(f"transfer-{l1}-{l2}-placebo", key,
                                          lambda: probe(placebos, False))["results"])
        for block in _blocks(draws):
            names = [f"{kind} random heads #{i + 1}" for i in block for kind in (up, "zero")]
            part = run.step(f"transfer-{l1}-{l2}-draws-{block.start // DRAW_BLOCK:03d}",
                            key | {"block": [block.start, block.stop]}, lambda names=names: probe(names, False))
            result["results"].update(part["results"])
        result["draws"] = draws
        results[f"{l1}-{l2}"] = result
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
              seed: int, draws: int) -> dict:
    from ...core.control import apply_head_mask
    from ...core.lm import greedy_generate
    from ...corpora.lcb import load_lcb
    from ...eval.lcb import NEXT_TURN, lcb_completion, lcb_metrics

    results: dict = {}
    names = ["none", "zero_source", "scale_target", "scale_placebo"] + [f"scale_random_{i}"
                                                                         for i in range(1, draws + 1)]
    sets = lazy_intervention_sets(run, scores, c.languages, c.source_lang, c.heads, s, seed, draws, "lcb")

    for lang in c.languages:
        rows = load_lcb(c.task, lang, data, sources=c.sources)
        rows = rows[:c.limit] if c.limit else rows
        for name in names:
            def compute(lang=lang, name=name, rows=rows) -> dict:
                label, mask = _masks_of(run.spec, sets(), lang, c.scale_up, [name])[name]
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

            key = {"scores": scores_fp, "settings": _without(c, "random_draws"), "lang": lang, "intervention": name,
                   "seed": seed, "data": data, "design": "strict-heads"}
            results.setdefault(lang, {})[name] = run.step(f"lcb-{lang}-{name}", key, compute)
    return results
