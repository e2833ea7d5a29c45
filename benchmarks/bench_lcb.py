"""Speed of the Language Confusion Benchmark metrics on one model's worth of realistic completions.

    python benchmarks/bench_lcb.py --data ../shared/data [--seed 0] [--identifier /path/lid.176.bin]

Builds one completion for each of the benchmark's 6,586 prompts (its task x source x language mix: 2,400
monolingual, 4,186 crosslingual, zh and ja included), each about what a model writes in 100 tokens: a first line,
then a few sentences or list items in the expected language (NTREX-128 sentences from <data>/ntrex128 when present,
else the benchmark's own prompts and few-shot answers), with the confusions models make: 15% carry an English
line, 10% English words inside a line, 5% are too short to score, 10% go on with a base model's "\\nQ:" turn.

Then times, in one process: the cold start (jieba's dictionary, MeCab, the fastText model), and `lcb_report` over
all completions (every completion through `lcb_completion`: normalisation, tokenization, line language ID, word
check). Prints completions/s (wall and CPU), the seconds for 6,600 completions including the cold start, and
whether the goal "the 6,600 completions of one model in under 10 s on 2 cores" is met (the metrics use one core).
"""

from __future__ import annotations

import argparse
import platform
import random
import re
import sys
import time
from pathlib import Path

GOAL_COMPLETIONS = 6600
GOAL_SECONDS = 10.0
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_NAMES = {"Arabic": "ar", "German": "de", "Spanish": "es", "French": "fr", "Hindi": "hi", "Indonesian": "id",
          "Italian": "it", "Japanese": "ja", "Korean": "ko", "Portuguese": "pt", "Russian": "ru", "Turkish": "tr",
          "Vietnamese": "vi", "Chinese": "zh", "English": "en"}
_CJK = ("zh", "ja")


def sentences_by_language(data: Path, langs, lcb_data) -> tuple[dict[str, list[str]], str]:
    """Sentences in each language: NTREX-128 when it is there, else the benchmark's prompts and few-shot answers."""
    ntrex = data / "ntrex128"
    if all((ntrex / f"{lang}.txt").is_file() for lang in langs):
        out = {lang: [s.strip() for s in (ntrex / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
                      if s.strip()] for lang in langs}
        return out, "NTREX-128 sentences"
    out: dict[str, list[str]] = {}
    for r in lcb_data.load_lcb("monolingual", None, data):
        out.setdefault(r["language"], []).append(r["prompt"])
    for lang in lcb_data.CROSSLINGUAL_LANGUAGES:  # crosslingual few-shot answers: the question names the language
        turns = lcb_data.few_shot_examples("crosslingual", lang, data)
        for q, a in zip(turns[::2], turns[1::2]):
            named = [c for n, c in _NAMES.items() if re.search(rf"\b{n}\b", q["message"])]
            if len(named) == 1:
                out.setdefault(named[0], []).append(a["message"])
    return out, "LCB prompts and few-shot answers"


def completion(rng: random.Random, lang: str, pool: dict[str, list[str]]) -> str:
    budget = 180 if lang in _CJK else 450  # ~100 tokens of output
    if rng.random() < 0.05:
        return rng.choice(["Sure!", "OK.", "1. Yes\n2. No", "..."])
    lines = [rng.choice(pool[lang])]
    list_style = rng.random() < 0.5
    while sum(map(len, lines)) < budget:
        s = rng.choice(pool[lang])
        lines.append(f"{len(lines)}. {s}" if list_style else s)
    text = ("\n" if list_style else "\n\n").join(lines)[: budget + 40]
    if rng.random() < 0.15:
        cut = text.find("\n")
        english = rng.choice(pool["en"])
        text = english + "\n\n" + text if cut < 0 else text[:cut] + "\n" + english + text[cut:]
    if rng.random() < 0.10:
        pos = rng.randint(0, len(text))
        text = text[:pos] + " the computer and the keyboard " + text[pos:]
    if rng.random() < 0.10:
        text += "\nQ: " + rng.choice(pool["en"]) + "\nA: " + rng.choice(pool[lang])
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="folder holding lcb/ (and ntrex128/), e.g. ../shared/data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--identifier", default=None, help="a fastText .bin/.ftz (default: the shipped lid.176.ftz)")
    args = ap.parse_args(argv)

    from lahis_ctrl.corpora import lcb as lcb_data

    t0 = time.perf_counter()
    prompts = lcb_data.load_lcb("monolingual", None, args.data) + lcb_data.load_lcb("crosslingual", None, args.data)
    pool, pool_name = sentences_by_language(args.data, lcb_data.LCB_LANGUAGES, lcb_data)
    rng = random.Random(args.seed)
    rows = [{"task": p["task"], "source": p["source"], "language": p["language"],
             "completion": completion(rng, p["language"], pool)} for p in prompts]
    build_s = time.perf_counter() - t0
    n = len(rows)
    chars = sum(len(r["completion"]) for r in rows)
    count = {key: sum(r["task"] == key or r["language"] == key for r in rows)
             for key in ("monolingual", "crosslingual", "zh", "ja")}
    print(f"{n} completions ({count['monolingual']} monolingual, {count['crosslingual']} crosslingual; "
          f"zh {count['zh']}, ja {count['ja']}), {chars / n:.0f} characters on average, built from {pool_name} "
          f"in {build_s:.1f} s")

    # cold start: what the first call of a process pays (imports, jieba's dictionary, MeCab, fastText)
    t0, c0 = time.perf_counter(), time.process_time()
    from lahis_ctrl.eval import lcb

    lid = lcb.lcb_identifier(args.identifier)
    words = lcb.english_words(args.data / "lcb" / "words")
    lcb.tokenize_line("预热", "zh")
    lcb.tokenize_line("予熱", "ja")
    cold_s, cold_cpu = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    report = lcb.lcb_report(rows, lid, words)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rate, rate_cpu = n / wall, n / max(cpu, 1e-9)
    total = cold_s + GOAL_COMPLETIONS / rate
    ok = total < GOAL_SECONDS

    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"language ID {report['identifier']}")
    print(f"cold start (imports, jieba dictionary, MeCab, fastText model): {cold_s:.2f} s wall, {cold_cpu:.2f} s CPU")
    print(f"lcb_report over {n} completions: {wall:.2f} s wall, {cpu:.2f} s CPU")
    print(f"completions/s: {rate:,.0f} (wall), {rate_cpu:,.0f} (CPU)")
    print(f"{GOAL_COMPLETIONS} completions: {total:.2f} s including the cold start "
          f"({GOAL_COMPLETIONS / rate:.2f} s without)")
    print(f"goal: the {GOAL_COMPLETIONS} completions of one model in under {GOAL_SECONDS:.0f} s on 2 cores: "
          f"{'MET' if ok else 'NOT MET'}")
    for task, t in report["models"][0]["tasks"].items():
        o = t["overall"]
        print(f"  (sanity) {task}: LPR {100 * o['lpr']:.1f}%  WPR {100 * o['wpr']:.1f}%  LCPR {100 * o['lcpr']:.1f}%")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
