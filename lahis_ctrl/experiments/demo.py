"""`lahis demo`: the whole method on the embedded default model, end to end, with no data and no hub.

Steps (each writes its files under `out`; a rerun skips the steps whose files exist, so an interrupted
demo resumes; `out/demo.json` records the settings and the model's identity, and a rerun into the folder with
other settings or another model's weights is refused rather than mixed with what is there):
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

from ..core.argtypes import Device, MaxLength, NonNegativeInt, PositiveInt
from ..core.errors import LahisError

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
    from ..core.control import apply_head_mask
    from ..core.fileio import write_json
    from ..core.lm import greedy_generate
    from ..core.architecture import describe
    from ..core.mask import HeadMask

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
         languages: list[str] = ["en", "de", "es", "hi", "zh"], data: Optional[str] = None, texts: PositiveInt = 8,
         max_length: MaxLength = 256, epochs: PositiveInt = 2, train_size: Optional[PositiveInt] = None,
         test_size: Optional[PositiveInt] = None, max_new_tokens: PositiveInt = 12,
         heads: Optional[list[tuple[int, int]]] = None, seed: NonNegativeInt = 0, skip_sample: bool = False,
         device: Device = "auto", device_map: Optional[str] = None) -> None:
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
        device: where the model runs: auto (the first GPU when there is one, else the CPU), cpu, cuda, cuda:1...
        device_map: e.g. 'auto' to spread a model larger than one GPU (needs accelerate); overrides --device.
    """
    from ..core.architecture import describe
    from ..core.fileio import run_lock
    from ..core.loading import load_model_on, load_tokenizer
    from ..corpora.xquad import XQUAD_LANGS, check_lang, load_qa, reference_split
    from ..lahis.softmask import default_n
    from .soft_masks import compare_soft_masks

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
    # what every file of the folder depends on: a folder made with other settings or weights is refused, not mixed
    settings = {"lang": lang, "languages": languages, "data": None if data is None else str(data), "texts": texts,
                "max_length": max_length, "epochs": epochs, "train_size": train_size, "test_size": test_size,
                "max_new_tokens": max_new_tokens, "heads": None if heads is None else [list(h) for h in heads],
                "seed": seed}
    check_demo_folder(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    with run_lock(out, f"lahis demo --out {out}"):
        t = _step("loading the model")
        m = load_model_on(model, dtype="float32", device=device, device_map=device_map)
        tok = load_tokenizer(model)
        check_demo_folder(out, settings, m)  # the weights too, now that they are loaded; records both
        spec = describe(m)
        print(f"{spec.name_or_path}: {spec.num_layers} layers x {spec.num_heads} heads "
              f"({spec.num_kv_heads} KV heads), head_dim {spec.head_dim}")
        _done(t)

        if not skip_sample:
            t = _step("1. generation with and without a head mask")
            generation_sample(m, tok, out, max_new_tokens=max_new_tokens, heads=heads)
            _done(t)

        t = _step(f"2. LAHIS scores of {', '.join(languages)} on the embedded passages (fast mode)")
        from ..lahis.scoring import score_languages

        scores = score_languages(m, tok, languages, source="embedded", n=texts, mode="fast", max_length=max_length,
                                 out_dir=out / "scores", progress=True)
        _report_heads(scores, out)
        _done(t, f"scores in {out / 'scores'}")

        n = default_n(spec)
        t = _step(f"3-4. soft head masks 'lahis' and 'random' for {lang}: {n} trainable head(s), {len(train)} items x "
                  f"{epochs} epochs; evaluation on {len(test)} held-out questions (greedy, 10 new tokens)")

        def show(kind, mask, path, trained_now):
            if not trained_now:
                print(f"   already trained: {path}")
            print("   " + ", ".join(f"L{l}H{h}: {mask.values[l, h]:.4f}" for l, h in mask.extra["trainable_heads"])
                  + f"  -> {path}")

        report, _ = compare_soft_masks(m, tok, lang, scores[lang], train, test, n, out / "masks", out / "eval",
                                       epochs=epochs, seed=seed, max_new_tokens=10, batch_size=8,
                                       extra={"data": "embedded QA sample" if data is None else str(data)}, on_mask=show)
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


MANIFEST = "demo.json"
MANIFEST_FORMAT = "lahis-demo/1"


def check_demo_folder(out: Path, settings: dict, model=None) -> None:
    """Refuse a demo folder made with other settings (or, given the loaded model, other weights), naming what
    differs; a folder of an earlier version (no demo.json) is taken as it is, its files check their own model. With
    `model`, (re)write demo.json with the settings and the model's identity."""
    from ..core.fileio import read_json, write_json
    from ..core.identity import check_same_model, model_identity

    path = Path(out) / MANIFEST
    recorded = read_json(path, "demo folder record") if path.is_file() else None
    if recorded is not None and (not isinstance(recorded, dict) or recorded.get("format") != MANIFEST_FORMAT):
        raise LahisError(f"{path} is not a demo folder record ({MANIFEST_FORMAT}): choose another --out")
    if recorded is not None:
        before = recorded.get("settings") or {}
        differ = [f"{k} {before[k]!r} (now {v!r})" for k, v in settings.items() if k in before and before[k] != v]
        if differ:
            raise LahisError(f"{out} holds a demo made with other settings: {', '.join(differ)}; choose another --out "
                             "(or remove that folder to start over)")
    if model is None:
        return
    identity = model_identity(model)
    if recorded is not None:
        check_same_model(recorded.get("model_identity"), identity, f"the demo in {out}",
                         fix="choose another --out (or remove that folder to start over)")
    write_json(path, {"format": MANIFEST_FORMAT, "settings": settings, "model_identity": identity})


def _report_heads(scores: dict, out: Path) -> None:
    """Print the language-specific and language-general heads; write heads.json and PNG plots."""
    if len(scores) < 2:
        return
    from ..lahis.heads import classify_heads

    c = classify_heads(scores)
    c.save(out / "heads.json")
    general = c.general_heads()
    print(f"   language-general heads (kept by >= {c.min_rep} of {len(c.languages)} languages): {general or 'none'}")
    for lang in c.languages:
        print(f"   {lang}: specific heads {c.specific(lang) or 'none'}")
    try:
        from ..core.fileio import replace_together
        from ..eval import plots

        with replace_together(out / "plots") as staged:  # the three plots of one run, or the previous ones
            for draw, name in ((lambda p: plots.plot_heatmaps(scores, p), "heatmaps.png"),
                               (lambda p: plots.plot_overlap(scores, p), "overlap.png"),
                               (lambda p: plots.plot_layer_distribution(c, p), "layers.png")):
                draw(staged / name)
        print("   plots: " + ", ".join(str(out / "plots" / n) for n in ("heatmaps.png", "overlap.png", "layers.png")))
    except Exception as exc:  # plots are a nicety: a missing backend must not stop the demo
        log.warning("could not draw the plots: %s", exc)
