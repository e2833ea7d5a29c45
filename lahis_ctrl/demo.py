"""`lahis demo`: the whole method on the embedded default model, end to end, with no data and no hub.

Steps (each writes its files under `out`; a rerun skips the steps whose files exist, so an interrupted
demo resumes):
  1. greedy outputs with and without a few heads silenced (a quick look at head masking);
  2. LAHIS scores of a few languages on the embedded passages (fast mode), specific/general heads, plots;
  3. a soft head mask for one language, trained on the embedded QA sample (or real XQuAD with --data),
     and a random-heads mask trained the same way (the baseline);
  4. evaluation of original vs random vs LAHIS mask on held-out questions: a table.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from .errors import LahisError

log = logging.getLogger(__name__)

DEMO_PROMPTS = {
    "en": "The capital of France is",
    "de": "Die Hauptstadt von Deutschland ist",
    "es": "La capital de España es",
    "hi": "भारत की राजधानी",
}


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(start: float, what: str = "") -> None:
    print(f"   ({what + ', ' if what else ''}{time.perf_counter() - start:.0f} s)", flush=True)


def generation_sample(m, tok, out: Path, max_new_tokens: int = 12, heads: Optional[list[tuple[int, int]]] = None) -> None:
    """Greedy outputs of a few prompts with and without `heads` zeroed (default: all heads of layers 0-1)."""
    from .control import apply_head_mask
    from .fileio import write_json
    from .generation import greedy_generate
    from .introspect import describe
    from .mask import HeadMask

    spec = describe(m)
    if heads is None:
        heads = [(layer, h) for layer in range(min(2, spec.num_layers)) for h in range(spec.num_heads)]
    mask = HeadMask.from_heads(m, heads, scale=0.0, method="demo-zero")
    mask_path = mask.save(Path(out) / "demo_mask.safetensors")
    prompts = list(DEMO_PROMPTS.values())
    sample_path = Path(out) / "sample.json"
    key = {"model": spec.name_or_path, "heads": [list(h) for h in heads], "prompts": prompts,
           "max_new_tokens": max_new_tokens}
    done = json.loads(sample_path.read_text(encoding="utf-8")) if sample_path.is_file() else {}
    if done.get("key") == key:
        plain, masked = done["original"], done["masked"]
    else:
        plain = greedy_generate(m, tok, prompts, max_new_tokens=max_new_tokens)
        with apply_head_mask(m, mask):
            masked = greedy_generate(m, tok, prompts, max_new_tokens=max_new_tokens)
        write_json(sample_path, {"key": key, "original": plain, "masked": masked})
    print(f"masked heads (layer, head): {heads}  -> mask saved to {mask_path}")
    for lang, prompt, a, b in zip(DEMO_PROMPTS, prompts, plain, masked):
        print(f"[{lang}] {prompt!r}\n   original: {a!r}\n   masked:   {b!r}")


def demo(model: str = "gemma-3-270m", out: Path = Path("runs/demo"), lang: str = "de",
         languages: list[str] = ["en", "de", "es", "hi", "zh"], data: Optional[str] = None, texts: int = 8,
         max_length: int = 256, epochs: int = 2, train_size: Optional[int] = None, test_size: Optional[int] = None,
         max_new_tokens: int = 12, heads: Optional[list[tuple[int, int]]] = None, seed: int = 0,
         skip_sample: bool = False) -> None:
    """Run the whole method on the embedded model: score languages, find language heads, train a soft head
    mask for one language and evaluate it against the original model and a random-heads mask.

    Args:
        model: hub id, local directory or the embedded 'gemma-3-270m' (installed from PyPI, no hub needed).
        out: folder for every file the demo writes; rerunning skips finished steps.
        lang: the language to train and evaluate the soft mask for.
        languages: languages to score (on the embedded passages); `lang` is added if missing.
        data: QA data for the mask: default the embedded QA sample; an XQuAD directory
            (xquad.<lang>.json or xquad/) for real XQuAD with the reference split.
        texts: embedded passages scored per language.
        max_length: tokens per scored passage.
        epochs: training epochs of the soft masks.
        train_size: train on only the first train_size items of the train split (useful with --data).
        test_size: evaluate only the first test_size items of the test split (useful with --data).
        max_new_tokens: tokens generated in the with/without-mask sample.
        heads: (layer, head) pairs zeroed in the generation sample; default every head of the first two layers.
        seed: seed of the random-heads baseline and of training.
        skip_sample: skip the with/without-mask generation sample.
    """
    from .evaluate import evaluate_masks
    from .introspect import describe
    from .loading import load_model, load_tokenizer
    from .mask import HeadMask
    from .train_mask import default_n, train_mask
    from .xquad import check_lang, load_qa, reference_split, XQUAD_LANGS

    check_lang(lang, XQUAD_LANGS)
    source = "embedded" if data is None else data
    rows, split = load_qa(lang, source)  # fail on bad data before loading the model
    train, test = reference_split(rows, split)
    train = train[:train_size] if train_size else train
    test = test[:test_size] if test_size else test
    if not train or not test:
        raise LahisError(f"the QA data for '{lang}' gave {len(train)} train and {len(test)} test items; need both")
    languages = list(dict.fromkeys(list(languages) + [lang]))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    t = _step("loading the model")
    m = load_model(model, dtype="float32")
    tok = load_tokenizer(model)
    spec = describe(m)
    print(f"{spec.name_or_path}: {spec.num_layers} layers x {spec.num_heads} heads "
          f"({spec.num_kv_heads} KV heads), head_dim {spec.head_dim}")
    _done(t)

    if not skip_sample:
        t = _step("1. generation with and without a head mask")
        generation_sample(m, tok, out, max_new_tokens=max_new_tokens, heads=heads)
        _done(t)

    t = _step(f"2. LAHIS scores of {', '.join(languages)} on the embedded passages (fast mode)")
    from .scoring import score_languages

    scores = score_languages(m, tok, languages, source="embedded", n=texts, mode="fast", max_length=max_length,
                             out_dir=out / "scores", progress=True)
    _report_heads(scores, out)
    _done(t, f"scores in {out / 'scores'}")

    n = default_n(spec)
    masks_dir = out / "masks"
    trained = {}
    for kind, name in (("top", "lahis"), ("random", "random")):
        path = masks_dir / f"{lang}-{name}.safetensors"
        t = _step(f"3. soft head mask '{name}' for {lang}: {n} trainable head(s), {len(train)} items x {epochs} epochs")
        if path.is_file():
            trained[name] = HeadMask.load(path).validate(spec)
            print(f"   already trained: {path}")
        else:
            trained[name] = train_mask(m, tok, lang, scores[lang] if kind == "top" else None, n=n, epochs=epochs,
                                       heads=kind, seed=seed, rows=train,
                                       checkpoint_dir=masks_dir / f"{lang}-{name}.ckpt", progress=True)
            trained[name].extra["data"] = "embedded QA sample" if data is None else str(data)
            trained[name].save(path)
        mk = trained[name]
        print("   " + ", ".join(f"L{l}H{h}: {mk.values[l, h]:.4f}" for l, h in mk.extra["trainable_heads"])
              + f"  -> {path}")
        _done(t)

    t = _step(f"4. evaluation on {len(test)} held-out {lang} questions (greedy, 10 new tokens)")
    report = evaluate_masks(m, tok, lang, {"original": None, "random": trained["random"], "lahis": trained["lahis"]},
                            test, max_new_tokens=10, batch_size=8, out_dir=out / "eval", progress=True)
    _done(t)
    print()
    print(report.table())
    if len(test) < 100:
        print(f"({len(test)} questions: differences of a few points are noise; run with --data DIR for real XQuAD)")
    print(f"\nfiles under {out}:")
    for p in ("demo_mask.safetensors", "sample.json", "scores/", "heads.json", "plots/", "masks/", "eval/results.md",
              "eval/examples.jsonl"):
        if (out / p.rstrip("/")).exists():
            print(f"  {out / p}")
    print(f"total {time.perf_counter() - t_all:.0f} s")


def _report_heads(scores: dict, out: Path) -> None:
    """Print the language-specific and language-general heads; write heads.json and PNG plots."""
    from .fileio import write_json

    if len(scores) < 2:
        return
    from .heads import classify_heads

    c = classify_heads(scores)
    write_json(out / "heads.json", c)
    general = [(g["layer"], g["head"]) for g in c["general"]]
    print(f"   language-general heads (kept by >= {c['min_rep']} of {len(c['languages'])} languages): {general or 'none'}")
    for lang, info in c["per_language"].items():
        spec_heads = [(d["layer"], d["head"]) for d in info["specific"]]
        print(f"   {lang}: specific heads {spec_heads or 'none'}")
    try:
        from . import plots

        written = [plots.plot_heatmaps(scores, out / "plots" / "heatmaps.png"),
                   plots.plot_overlap(scores, out / "plots" / "overlap.png"),
                   plots.plot_layer_distribution(c, out / "plots" / "layers.png")]
        print("   plots: " + ", ".join(str(p) for p in written))
    except Exception as exc:  # plots are a nicety: a missing backend must not stop the demo
        log.warning("could not draw the plots: %s", exc)
