"""`lahis reproduce`: the paper's experiments end to end on one model, written up as a report folder.

    lahis reproduce --config configs/reproduce-gemma-3-270m.yaml --data ../shared/data

Steps (each one's result is stored under <out>/work/steps/ with a fingerprint of its settings; a rerun
skips every step whose settings did not change, and the long steps also resume mid-way through their own
checkpoints):
  1. scores    LAHIS scores of every language on NTREX-128 passages; specific / general heads; heatmaps.
  2. ppl       the ppl-cross matrix: X's perplexity with Y's top-k specific heads zeroed vs k random heads,
               on NTREX passages that were not scored.
  3. xquad     per language: a soft mask on its top-n LAHIS heads and one on n random heads, trained on
               the reference train split, evaluated with the original model on held-out test items.
  4. off_target  lm-eval's xquad_xling_<T> and ntrex_en_<T> with and without head interventions (zeroing
               the source language's heads, scaling the target language's heads up, and controls).
  5. transfer  the Alice occupation probe (attention transfer) with language-1 heads x3 and language-2
               heads x0, against random heads.
The report (<out>/report.md, results.json with every number, plots/*.png, config.yaml, the package version)
is rewritten from the stored results at the end of every run; a "Findings" section checks each of the
paper's claims against the numbers, so what does not hold on this model says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import LahisError

log = logging.getLogger(__name__)

STEPS = ("scores", "ppl", "xquad", "off_target", "transfer")
README_START = "<!-- lahis reproduce: start -->"
README_END = "<!-- lahis reproduce: end -->"


# ====================================================================== settings (the YAML config's sections)
@dataclass
class ScoringSettings:
    """Step 1: LAHIS scores.

    Args:
        languages: languages to score (8 or more for the report's classification).
        source: "ntrex" (NTREX-128: <data>/ntrex128 with --data, else downloaded), "wikipedia" (the
            reference's corpus, hub), "embedded", or a local path (see lahis_ctrl.corpora).
        texts: passages per language (the reference: 1000 Wikipedia articles).
        max_length: tokens per passage (the reference: 2048).
        mode: "fast" (batched, m fixed at 1) or "faithful" (the reference's online AdamW updates).
        batch_size: texts per backward pass in fast mode.
        q: quantile above which a head is kept for a language (the reference: 0.96).
        min_rep: languages that must keep a head for it to be language-general (default: see heads.py).
    """

    languages: list[str] = field(default_factory=lambda: ["en", "de", "es", "hi", "ru", "zh", "vi", "ar"])
    source: str = "ntrex"
    texts: int = 20
    max_length: int = 256
    mode: str = "fast"
    batch_size: int = 4
    q: float = 0.96
    min_rep: Optional[int] = None


@dataclass
class PplSettings:
    """Step 2: the perplexity matrix.

    Args:
        languages: text languages X (default: every scored language); columns Y are all scored languages.
        texts: held-out passages per language (taken after the scored ones, never the same text).
        k: heads zeroed per language (its top-k language-specific heads) and per random draw.
        random_trials: random k-head draws averaged for the baseline.
        max_length: tokens per passage.
        batch_size: passages per forward pass.
    """

    languages: Optional[list[str]] = None
    texts: int = 8
    k: int = 3
    random_trials: int = 3
    max_length: int = 256
    batch_size: int = 4


@dataclass
class XquadSettings:
    """Step 3: soft head masks on XQuAD.

    Args:
        languages: XQuAD languages (each must be scored in step 1).
        heads: trainable heads per mask; default max(4, 2% of all heads) (the reference: 2%).
        train_items: first items of the reference train split (items [0:390], 200 shuffled with seed 68);
            null = all 200.
        test_items: first items of the held-out test split (items [390:1190]); null = all 800.
        epochs: training epochs (the reference: 2).
        lr: AdamW learning rate (the reference: 1e-2).
        max_new_tokens: greedy tokens generated per answer (the reference: 10).
        batch_size: prompts per generate call.
    """

    languages: list[str] = field(default_factory=lambda: ["de", "es", "hi", "ru"])
    heads: Optional[int] = None
    train_items: Optional[int] = 48
    test_items: Optional[int] = 80
    epochs: int = 1
    lr: float = 1e-2
    max_new_tokens: int = 10
    batch_size: int = 8


@dataclass
class OffTargetSettings:
    """Step 4: off-target language rates through lm-eval.

    Args:
        languages: target languages T (scored in step 1; tasks xquad_xling_<T> and ntrex_en_<T>).
        source_lang: the other language of the prompt (xquad_xling's context, the translation's source).
        tasks: task families run per language: "xquad_xling" and/or "ntrex_en".
        heads: heads per intervention (default max(1, 1% of all heads) as in the paper, at least 2).
        scale_up: the factor of the "scale T's heads up" intervention.
        limit: documents per task (null = all).
        max_gen_toks: generation budget per document (both tasks stop at a newline).
        batch_size: lm-eval batch size.
    """

    languages: list[str] = field(default_factory=lambda: ["de", "es", "hi", "ru"])
    source_lang: str = "en"
    tasks: list[str] = field(default_factory=lambda: ["xquad_xling", "ntrex_en"])
    heads: Optional[int] = None
    scale_up: float = 3.0
    limit: Optional[int] = 24
    max_gen_toks: int = 40
    batch_size: int = 8


@dataclass
class TransferSettings:
    """Step 5: attention transfer (the Alice occupation probe).

    Args:
        pairs: [language 1, language 2] pairs: the prompt states Alice's occupation X in language 1 and Y
            in language 2, then asks in English.
        heads: heads per language and intervention (default as for off_target).
        scale_up: factor on language 1's heads (the paper: 3).
        items: probe items per pair (ordered occupation pairs, both statement orders; null = all).
        batch_size: prompts per forward pass.
    """

    pairs: list[list[str]] = field(default_factory=lambda: [["de", "es"], ["es", "de"]])
    heads: Optional[int] = None
    scale_up: float = 3.0
    items: Optional[int] = 40
    batch_size: int = 8


# ====================================================================== step runner
def _fingerprint(key: Any) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Run:
    """The state of one `reproduce` call: output folders, the lazily loaded model, and the step log."""

    def __init__(self, model: str, dtype: str, device_map: Optional[str], device: Optional[str], out: Path,
                 force: bool = False):
        self.model_name, self.dtype, self.device_map, self.device = model, dtype, device_map, device
        self.out, self.work = out, out / "work"
        self.force = force
        self.log: list[dict] = []
        self._model = self._tok = None

    # the model is loaded on first use: a rerun whose steps are all done never loads it
    @property
    def model(self):
        if self._model is None:
            from .loading import load_model

            t = time.perf_counter()
            print(f"   loading {self.model_name} ({self.dtype}) ...", flush=True)
            self._model = load_model(self.model_name, dtype=self.dtype, device_map=self.device_map)
            if self.device and self.device_map is None:
                self._model = self._model.to(self.device)
            print(f"   loaded in {time.perf_counter() - t:.0f} s", flush=True)
        return self._model

    @property
    def tok(self):
        if self._tok is None:
            from .loading import load_tokenizer

            self._tok = load_tokenizer(self.model_name)
        return self._tok

    @property
    def spec(self):
        from .introspect import describe

        return describe(self.model)

    def step(self, name: str, key: Any, fn: Callable[[], Any],
             still_valid: Callable[[Any], bool] = lambda result: True) -> Any:
        """fn()'s JSON-able result, or the stored one when this step already ran with the same `key` (and
        `still_valid(stored result)`, e.g. the files it names still exist)."""
        from .fileio import read_json, write_json

        path = self.work / "steps" / f"{name}.json"
        fp = _fingerprint(key)
        if path.is_file() and not self.force:
            stored = read_json(path, "step result")
            if stored.get("fingerprint") == fp and still_valid(stored["result"]):
                print(f"   {name}: done in an earlier run ({stored.get('seconds', 0):.0f} s then), skipped", flush=True)
                self.log.append({"step": name, "skipped": True, "seconds": stored.get("seconds", 0.0)})
                return stored["result"]
            print(f"   {name}: settings changed or files gone since the stored result; running it again", flush=True)
        t = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
        write_json(path, {"fingerprint": fp, "key": key, "seconds": seconds, "result": result})
        self.log.append({"step": name, "skipped": False, "seconds": seconds})
        return result


def _header(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _one_percent(spec, n: Optional[int]) -> int:
    return int(n) if n is not None else max(2, int(0.01 * spec.num_layers * spec.num_heads))


def _model_facts(spec) -> dict:
    return {"name": spec.name_or_path, "model_type": spec.model_type, "layers": spec.num_layers,
            "heads": spec.num_heads, "kv_heads": spec.num_kv_heads, "head_dim": spec.head_dim}


# ====================================================================== 1. scores
def _scores_step(run: _Run, s: ScoringSettings, source: str, seed: int) -> dict:
    from .heads import classify_heads
    from .scoring import score_languages

    def compute() -> dict:
        scores = score_languages(run.model, run.tok, s.languages, source=source, n=s.texts, mode=s.mode,
                                 max_length=s.max_length, batch_size=s.batch_size, seed=seed,
                                 out_dir=run.work / "scores", progress=True)
        c = classify_heads(scores, q=s.q, min_rep=s.min_rep)
        return {"files": {lang: str(run.work / "scores" / f"{lang}.safetensors") for lang in scores},
                "texts": {lang: sc.num_texts for lang, sc in scores.items()},
                "tokens": {lang: sc.num_tokens for lang, sc in scores.items()},
                "classification": c, "model": _model_facts(run.spec)}

    key = {"model": run.model_name, "dtype": run.dtype, "settings": dataclasses.asdict(s), "source": source,
           "seed": seed}
    files_exist = lambda result: all(Path(p).is_file() for p in result["files"].values())  # noqa: E731
    return run.step("scores", key, compute, still_valid=files_exist) | {"fingerprint": _fingerprint(key)}


def _specific(scores: dict, lang: str, k: int, s: ScoringSettings) -> list[tuple[int, int]]:
    from .heads import top_specific_heads

    if lang not in scores:
        raise LahisError(f"language '{lang}' has no LAHIS scores: add it to scoring.languages ({', '.join(scores)})")
    return top_specific_heads(scores, lang, k, q=s.q, min_rep=s.min_rep)


# ====================================================================== 2. ppl
def _ppl_step(run: _Run, p: PplSettings, s: ScoringSettings, source: str, scores: dict, scores_fp: str,
              seed: int) -> dict:
    from .corpora import load_texts
    from .ppl import ppl_cross

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
    from .evaluate import evaluate_masks
    from .mask import HeadMask
    from .train_mask import train_mask
    from .xquad import XQUAD_LANGS, check_lang, load_qa, reference_split

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
            masks, heads = {}, {}
            for kind in ("lahis", "random"):
                path = run.work / "masks" / f"{lang}-{kind}.safetensors"
                if path.is_file():
                    masks[kind] = HeadMask.load(path).validate(spec)
                else:
                    masks[kind] = train_mask(run.model, run.tok, lang, scores[lang] if kind == "lahis" else None, n=n,
                                             epochs=xs.epochs, lr=xs.lr, heads="top" if kind == "lahis" else "random",
                                             seed=seed, rows=train, checkpoint_dir=run.work / "masks" / f"{lang}-{kind}.ckpt",
                                             progress=True)
                    masks[kind].save(path)
                heads[kind] = [[int(l), int(h), float(masks[kind].values[l, h])] for l, h in masks[kind].extra["trainable_heads"]]
            report = evaluate_masks(run.model, run.tok, lang, {"original": None, "random": masks["random"],
                                                                "lahis": masks["lahis"]},
                                    test, max_new_tokens=xs.max_new_tokens, batch_size=xs.batch_size,
                                    out_dir=run.work / "xquad" / lang, progress=True)
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
    from .mask import HeadMask
    from .ppl import random_heads

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

    from .errors import require

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

            from .lm_eval_cli import tasks_dir
            from .lm_eval_models import LahisHFLM

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
            from .mask import HeadMask
            from .ppl import random_heads
            from .transfer import alice_probe

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


# ====================================================================== findings, tables, plots
def _task_families(ot: dict) -> list[str]:
    """The task families (xquad_xling, ntrex_en) present in off-target results {lang: {intervention: ...}}."""
    return sorted({t for per in ot.values() for r in per.values() for t in r["tasks"]})


def _mean(xs) -> Optional[float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else None


def findings(results: dict) -> list[dict]:
    """Each claim of the paper checked against this run's numbers: {claim, holds, evidence}."""
    out = []
    ppl = results.get("ppl")
    if ppl:
        xs = [x for x in ppl["languages"] if x in ppl["masked"]]
        own_vs_random = [x for x in xs if ppl["masked"][x][x]["corpus_ppl"] > ppl["random"][x]["corpus_ppl"]]
        diag = [x for x in xs if ppl["masked"][x][x]["corpus_ppl"] >= max(ppl["masked"][y][x]["corpus_ppl"]
                                                                             for y in ppl["masked_languages"])]
        out.append({"claim": f"zeroing a language's top-{ppl['k']} specific heads raises its perplexity more than "
                             f"{ppl['k']} random heads", "holds": len(own_vs_random) > len(xs) / 2,
                    "evidence": f"{len(own_vs_random)} of {len(xs)} languages ({', '.join(own_vs_random) or 'none'})"})
        out.append({"claim": "a language is hurt most by its own heads (diagonal of the ppl matrix)",
                    "holds": len(diag) > len(xs) / 2,
                    "evidence": f"{len(diag)} of {len(xs)} languages ({', '.join(diag) or 'none'})"})
    xq = results.get("xquad")
    if xq:
        d_orig = {l: r["summary"]["lahis"]["accuracy"] - r["summary"]["original"]["accuracy"] for l, r in xq.items()}
        d_rand = {l: r["summary"]["lahis"]["accuracy"] - r["summary"]["random"]["accuracy"] for l, r in xq.items()}
        ev = ", ".join(f"{l} {100 * d_orig[l]:+.1f}" for l in xq)
        out.append({"claim": "the LAHIS soft mask improves XQuAD accuracy over the original model (paper: ~+5 points)",
                    "holds": _mean(d_orig.values()) > 0,
                    "evidence": f"mean {100 * _mean(d_orig.values()):+.1f} points ({ev})"})
        out.append({"claim": "the LAHIS soft mask beats a random-heads soft mask",
                    "holds": _mean(d_rand.values()) > 0,
                    "evidence": f"mean {100 * _mean(d_rand.values()):+.1f} points ("
                                + ", ".join(f"{l} {100 * d_rand[l]:+.1f}" for l in xq) + ")"})
    ot = results.get("off_target")
    if ot:
        tasks = _task_families(ot)
        for t in tasks:
            def rate(per: dict, name: str):
                return per[name]["tasks"][t]["metrics"].get("off_target_rate") if t in per[name]["tasks"] else None

            for name, claim in (("zero_source", "zeroing the source language's heads lowers the off-target rate"),
                                ("scale_target", "scaling the target language's heads up lowers the off-target rate")):
                # compare only languages where both runs had outputs whose language could be decided: a mean
                # over different sets of languages would compare languages, not interventions
                langs = [l for l, per in ot.items() if rate(per, "none") is not None and rate(per, name) is not None]
                if not langs:
                    out.append({"claim": f"{t}: {claim}", "holds": None,
                                "evidence": "no language had decided outputs both with and without it (see undetermined %)"})
                    continue
                before = _mean(rate(ot[l], "none") for l in langs)
                after = _mean(rate(ot[l], name) for l in langs)
                ctrl_langs = [l for l in langs if rate(ot[l], "zero_random") is not None]
                ctrl = (f"zero random heads on the same languages: {100 * _mean(rate(ot[l], 'none') for l in ctrl_langs):.1f}% -> "
                        f"{100 * _mean(rate(ot[l], 'zero_random') for l in ctrl_langs):.1f}%" if ctrl_langs else "no random control")
                out.append({"claim": f"{t}: {claim}", "holds": after < before,
                            "evidence": f"mean off-target {100 * before:.1f}% -> {100 * after:.1f}% over {', '.join(langs)} "
                                        f"({ctrl})"})
    tr = results.get("transfer")
    if tr:
        for pair, r in tr.items():
            res = r["results"]
            names = list(res)  # none, x<s> lang1 heads, zero lang2 heads, x<s> random heads, zero random heads
            base = res["none"]
            for name, control in ((names[1], names[3]), (names[2], names[4])):
                shift = res[name]["mean_log_odds"] - base["mean_log_odds"]
                ctrl = res[control]["mean_log_odds"] - base["mean_log_odds"]
                out.append({"claim": f"transfer {pair}: {name} moves the answer toward language 1's occupation "
                                     "more than the same change on random heads",
                            "holds": shift > 0 and shift > ctrl,
                            "evidence": f"log-odds X:Y {base['mean_log_odds']:+.2f} -> {res[name]['mean_log_odds']:+.2f} "
                                        f"({shift:+.2f}; {control}: {ctrl:+.2f}); prefers X "
                                        f"{100 * base['share_prefers_x']:.0f}% -> {100 * res[name]['share_prefers_x']:.0f}%"})
    return [f | {"holds": None if f["holds"] is None else bool(f["holds"])} for f in out]


def _verdict(holds: Optional[bool], readme: bool = False) -> str:
    if holds is None:
        return "Undecided" if readme else "n/a"
    if readme:
        return "Holds" if holds else "Does not hold"
    return "yes" if holds else "**no**"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _tables(results: dict) -> dict[str, str]:
    from .heads import format_classification
    from .ppl import format_table as ppl_table

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
        from .transfer import format_probe_table

        t["transfer"] = "\n\n".join(format_probe_table(r) for r in results["transfer"].values())
    return t


def _plots(results: dict, out: Path, scores: Optional[dict]) -> dict[str, str]:
    from . import plots

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
    from .fileio import write_text

    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if README_START in text and README_END in text:
        before, rest = text.split(README_START, 1)
        after = rest.split(README_END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text(readme, text)


# ====================================================================== the command
def _check_languages(steps, scoring: ScoringSettings, xquad: XquadSettings, off_target: OffTargetSettings,
                     transfer: TransferSettings) -> None:
    """Every language a step needs must be scored (its heads come from step 1) and known to that step."""
    from .transfer import LANGUAGES as PROBE_LANGUAGES
    from .xquad import XQUAD_LANGS, check_lang

    scored = set(scoring.languages)
    needs = []
    if "xquad" in steps:
        for lang in xquad.languages:
            check_lang(lang, XQUAD_LANGS)
        needs += [("xquad.languages", lang) for lang in xquad.languages]
    if "off_target" in steps:
        bad = [t for t in off_target.tasks if t not in ("xquad_xling", "ntrex_en")]
        if bad:
            raise LahisError(f"unknown off_target task(s) {bad}: use xquad_xling and/or ntrex_en")
        needs += [("off_target.languages", lang) for lang in off_target.languages]
        needs.append(("off_target.source_lang", off_target.source_lang))
    if "transfer" in steps:
        for pair in transfer.pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise LahisError(f"transfer pair {pair}: give two different languages, e.g. [de, es]")
            unknown = [lang for lang in pair if lang not in PROBE_LANGUAGES]
            if unknown:
                raise LahisError(f"the Alice probe has no text for {unknown}: transfer languages are "
                                 f"{' '.join(PROBE_LANGUAGES)}")
            needs += [("transfer.pairs", lang) for lang in pair]
    missing = [(where, lang) for where, lang in needs if lang not in scored]
    if missing:
        where, lang = missing[0]
        raise LahisError(f"{where} names '{lang}', which is not in scoring.languages ({' '.join(scoring.languages)}): "
                         "its heads come from the LAHIS scores, so add it there")


def reproduce(model: str = "gemma-3-270m", data: Optional[str] = None, out: Path = Path("runs/reproduce"),
              dtype: str = "float32", device_map: Optional[str] = None, device: Optional[str] = None, seed: int = 0,
              steps: list[str] = list(STEPS), force: bool = False,
              scoring: ScoringSettings = ScoringSettings(), ppl: PplSettings = PplSettings(),
              xquad: XquadSettings = XquadSettings(), off_target: OffTargetSettings = OffTargetSettings(),
              transfer: TransferSettings = TransferSettings(), readme: Optional[Path] = None) -> dict:
    """Reproduce the paper's experiments on one model and write a report folder (report.md, results.json,
    plots/*.png, config.yaml). Every step is resumable: a rerun skips what is done.

    Args:
        model: hub id, local directory or the embedded 'gemma-3-270m'.
        data: a directory with xquad/ and ntrex128/ (the layout of ../shared/data); null = the hub / GitHub.
        out: the report folder (work files under <out>/work).
        dtype: model dtype: float32 on CPU; bfloat16 on a GPU.
        device_map: e.g. "auto" to spread a large model over GPUs (needs accelerate).
        device: move the model there after loading ("cuda"); ignored with device_map.
        seed: seeds random heads, shuffling and training.
        steps: which steps to run (scores is always needed by the others): scores ppl xquad off_target transfer.
        force: recompute every step even when a stored result matches.
        scoring: step 1 settings (see ScoringSettings).
        ppl: step 2 settings.
        xquad: step 3 settings.
        off_target: step 4 settings.
        transfer: step 5 settings.
        readme: also write the short results section into this README (between the reproduce markers) and
            copy the report (without the work files) to docs/reproduce/<model name>/ beside it.
    """
    import lahis_ctrl

    from .fileio import write_json, write_text
    from .heads import load_scores

    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise LahisError(f"unknown step(s) {bad}: choose from {' '.join(STEPS)}")
    if data is not None and not Path(data).is_dir():
        raise LahisError(f"data directory not found: {data} (it should hold xquad/ and ntrex128/, like ../shared/data)")
    if len(scoring.languages) < 2:
        raise LahisError("scoring.languages needs at least 2 languages to tell specific from general heads")
    _check_languages(steps, scoring, xquad, off_target, transfer)
    from .corpora import check_source

    source = str(Path(data) / "ntrex128") if scoring.source == "ntrex" and data else scoring.source
    for lang in scoring.languages:  # bad languages / missing files fail before the model is loaded
        check_source(source, lang)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model": model, "data": data, "out": str(out), "dtype": dtype, "device_map": device_map,
              "device": device, "seed": seed, "steps": list(steps), "scoring": dataclasses.asdict(scoring),
              "ppl": dataclasses.asdict(ppl), "xquad": dataclasses.asdict(xquad),
              "off_target": dataclasses.asdict(off_target), "transfer": dataclasses.asdict(transfer)}
    run = _Run(model, dtype, device_map, device, out, force=force)
    t_all = time.perf_counter()

    _header(f"1. LAHIS scores of {', '.join(scoring.languages)} ({source}, {scoring.texts} x {scoring.max_length} tokens)")
    scores_res = _scores_step(run, scoring, source, seed)
    results: dict[str, Any] = {"scores": {k: v for k, v in scores_res.items() if k != "fingerprint"}}
    scores, scores_fp = load_scores(list(scores_res["files"].values())), scores_res["fingerprint"]
    if "ppl" in steps:
        _header(f"2. perplexity matrix (top-{ppl.k} specific heads zeroed vs {ppl.k} random heads)")
        results["ppl"] = _ppl_step(run, ppl, scoring, source, scores, scores_fp, seed)
    if "xquad" in steps:
        _header(f"3. XQuAD soft masks: {', '.join(xquad.languages)}")
        results["xquad"] = _xquad_step(run, xquad, scoring, scores, scores_fp, data, seed)
    if "off_target" in steps:
        _header(f"4. off-target rates: {', '.join(off_target.tasks)} x {', '.join(off_target.languages)}")
        results["off_target"] = _off_target_step(run, off_target, scoring, scores, scores_fp, data, seed)
    if "transfer" in steps:
        _header(f"5. attention transfer: {', '.join('-'.join(p) for p in transfer.pairs)}")
        results["transfer"] = _transfer_step(run, transfer, scoring, scores, scores_fp, seed)

    _header("report")
    results = {"version": lahis_ctrl.__version__, "model": scores_res["model"], "config": config, **results}
    results["findings"] = findings(results)
    results["steps"] = run.log
    plots_made = _plots(results, out, scores)
    results["plots"] = plots_made
    import yaml

    write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    write_json(out / "results.json", results)
    write_text(out / "report.md", render_report(results, _tables(results), plots_made))
    if readme is not None:
        readme = Path(readme)
        dest = publish(out, readme, Path(model).name)
        rel = lambda p: str(p.resolve().relative_to(readme.parent.resolve()))  # noqa: E731
        plot = rel(dest / plots_made["ppl_cross"]) if "ppl_cross" in plots_made else None
        update_readme(readme, readme_section(results, rel(dest / "report.md"), plot))
        print(f"   README section written to {readme}; report copied to {dest}")
    for f in results["findings"]:
        print(f"   {_verdict(f['holds'], readme=True)}: {f['claim']} - {f['evidence']}")
    ran = sum(1 for s in run.log if not s["skipped"])
    print(f"\nreport: {out / 'report.md'}  ({ran} step(s) ran, {len(run.log) - ran} skipped; "
          f"{time.perf_counter() - t_all:.0f} s)")
    return results
