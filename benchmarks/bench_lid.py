"""Language-ID backends side by side: speed (lines/s) and accuracy on NTREX-128.

    python benchmarks/bench_lid.py [--data ../shared/data/ntrex128] [--per-lang 200]
        [--model fasttext=/path/lid.176.bin] [--model glotlid=/path/model.bin] [--model openlid=/path/model.bin]
        [--out runs/bench_lid]

Measured in one run, one process:
- speed: lines/s of LanguageIdentifier.predict (cleaning + classification + label normalisation) on
  sentence-length lines (NTREX sentences) and short lines (their first 3 words); for fastText models also the
  bare C++ predict of the same lines, to show what the cleaning costs. The goal for the .ftz backend is
  >= 50,000 lines/s.
- accuracy: per language, the share of the first N sentences of each NTREX-128 file identified as that language,
  at min_confidence 0 (top-1 label) and at the default 0.5 (undetermined counts as wrong).
- accuracy by length (fastText backends): the same sentences cut to their first 10 / 20 / 40 characters and first
  1 / 2 / 3 / 5 / 8 words (words: languages written with spaces), at the default settings: how many are decided,
  how many of the decided are right, and how many Chinese snippets are called Japanese.
Prints Markdown tables (docs/audit.md carries a copy) and, with --out, writes them with the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from lahis_ctrl.core.fileio import write_json, write_text
from lahis_ctrl.eval.langid import LanguageIdentifier, normalize_lang

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ntrex128"


def load_ntrex(data: Path, per_lang: int) -> dict[str, list[str]]:
    files = sorted(p for p in data.glob("*.txt"))
    if not files:
        sys.exit(f"no NTREX-128 <lang>.txt files in {data} (pass --data)")
    out = {}
    for f in files:
        lines = [x.strip() for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
        out[normalize_lang(f.stem)] = lines[:per_lang]
    return out


def lines_per_second(fn, lines: list[str], min_seconds: float) -> dict[str, float]:
    """Run fn(lines) until min_seconds of wall time have passed (at least once).

    Returns lines per second of wall time and per second of this process's CPU time: on a shared machine the
    wall rate drops with the load, the CPU rate is what one uncontended core would do."""
    fn(lines[:50])  # warm-up: first-call caches
    done, start, cpu0 = 0, time.perf_counter(), time.process_time()
    while True:
        fn(lines)
        done += len(lines)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return {"wall": done / elapsed, "cpu": done / max(time.process_time() - cpu0, 1e-9)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ.get("LAHIS_DATA_DIR")
    ap.add_argument("--data", type=Path, default=Path(env) / "ntrex128" if env else DEFAULT_DATA,
                    help="folder of NTREX-128 <lang>.txt files (default: $LAHIS_DATA_DIR/ntrex128 or ../shared/data)")
    ap.add_argument("--per-lang", type=int, default=200, help="sentences per language for accuracy")
    ap.add_argument("--model", action="append", default=[], metavar="BACKEND=PATH",
                    help="an extra fastText model: fasttext=lid.176.bin, glotlid=model.bin, openlid=model.bin")
    ap.add_argument("--no-langdetect", action="store_true", help="skip langdetect (~1 ms a line)")
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum timing per speed measurement")
    ap.add_argument("--out", type=Path, help="folder for bench_lid.md and bench_lid.json")
    args = ap.parse_args(argv)

    data = load_ntrex(args.data, args.per_lang)
    langs = list(data)
    sentences = [s for lang in langs for s in data[lang]]
    gold = [lang for lang in langs for _ in data[lang]]
    short = [" ".join(s.split()[:3]) for s in sentences]  # CJK/Thai have few spaces: their "3 words" stay long

    backends: list[tuple[str, str | None]] = [("fasttext", None)]
    if not args.no_langdetect:
        backends.append(("langdetect", None))
    for spec in args.model:
        name, _, path = spec.partition("=")
        if not path:
            sys.exit(f"--model takes BACKEND=PATH, got {spec!r}")
        backends.append((name, path))

    results = []
    for backend, path in backends:
        strict = LanguageIdentifier(backend, path, min_confidence=0.5)
        top1 = LanguageIdentifier(backend, path, min_confidence=0.0)
        name = strict.name
        print(f"[{name}] timing ...", file=sys.stderr)
        # langdetect is ~100x slower: time it on a slice so the run stays short
        sub = slice(0, 1000) if backend == "langdetect" else slice(None)
        speed = {
            "sentence": lines_per_second(strict.predict, sentences[sub], args.seconds),
            "short": lines_per_second(strict.predict, short[sub], args.seconds),
        }
        if backend != "langdetect":
            ft = strict._ft  # the bare C++ classifier, same lines, no cleaning or normalisation

            def bare(lines, ft=ft):
                for x in lines:
                    ft.predict(x + "\n", 1, 0.0, "replace")
            speed["sentence_bare"] = lines_per_second(bare, sentences, args.seconds)
            speed["short_bare"] = lines_per_second(bare, short, args.seconds)
        print(f"[{name}] accuracy ...", file=sys.stderr)
        p_top1, p_strict = top1.predict(sentences), strict.predict(sentences)
        acc = {}
        for lang in langs:
            idx = [i for i, g in enumerate(gold) if g == lang]
            acc[lang] = {
                "top1": sum(p_top1[i].lang == lang for i in idx) / len(idx),
                "strict": sum(p_strict[i].lang == lang for i in idx) / len(idx),
                "undetermined": sum(not p_strict[i].determined for i in idx) / len(idx),
                "confused_with": _top_confusion([p_top1[i].lang for i in idx], lang),
            }
        results.append({"backend": name, "speed": speed, "accuracy": acc,
                        "macro_top1": sum(a["top1"] for a in acc.values()) / len(acc),
                        "macro_strict": sum(a["strict"] for a in acc.values()) / len(acc)})
        if backend != "langdetect":
            print(f"[{name}] accuracy by length ...", file=sys.stderr)
            results[-1]["by_length"] = by_length(strict, data)

    md = render(results, langs, args, len(sentences))
    print(md)
    if args.out:
        write_text(args.out / "bench_lid.md", md)
        write_json(args.out / "bench_lid.json", {"results": results, "per_lang": args.per_lang,
                                                 "machine": _machine()})


NO_SPACES = {"zh", "ja", "th"}  # written without spaces between words: cut by characters only
LENGTHS = (("chars", 10), ("chars", 20), ("chars", 40), ("words", 1), ("words", 2), ("words", 3), ("words", 5),
           ("words", 8))


def by_length(lid: LanguageIdentifier, data: dict[str, list[str]]) -> list[dict]:
    """Per snippet length: snippets, share decided, share of the decided that are right, share right of all, and
    Chinese snippets called Japanese."""
    rows = []
    for unit, n in LENGTHS:
        texts, gold = [], []
        for lang, lines in data.items():
            if unit == "words" and lang in NO_SPACES:
                continue
            for line in lines:
                texts.append(line[:n] if unit == "chars" else " ".join(line.split()[:n]))
                gold.append(lang)
        preds = lid.predict(texts)
        decided = [(p.lang, g) for p, g in zip(preds, gold) if p.determined]
        zh = [p for p, g in zip(preds, gold) if g == "zh"]
        rows.append({"unit": unit, "n": n, "snippets": len(texts), "decided": len(decided) / len(texts),
                     "right_of_decided": sum(a == b for a, b in decided) / max(len(decided), 1),
                     "right_of_all": sum(a == b for a, b in decided) / len(texts),
                     "zh_called_ja": sum(p.lang == "ja" for p in zh) / len(zh) if zh else None})
    return rows


def _top_confusion(preds: list[str | None], lang: str) -> str | None:
    from collections import Counter

    wrong = Counter(p or "und" for p in preds if p != lang)
    return wrong.most_common(1)[0][0] if wrong else None


def _machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load:.1f}, " \
           f"Python {platform.python_version()}"


def render(results: list[dict], langs: list[str], args, n: int) -> str:
    out = [f"Language ID on NTREX-128 ({len(langs)} languages x {args.per_lang} sentences = {n}); one process on "
           f"{_machine()}.", "",
           "**Speed**, lines per second of CPU time (in brackets: of wall time, lower on a loaded machine); `bare` = "
           "the fastText C++ predict alone, without cleaning and label normalisation:", ""]
    out += ["| backend | sentence lines | short lines (3 words) | sentence, bare | short, bare |",
            "|---|---:|---:|---:|---:|"]
    for r in results:
        s = r["speed"]
        fmt = lambda k: f"{s[k]['cpu']:,.0f} ({s[k]['wall']:,.0f})" if k in s else "-"  # noqa: E731
        out.append(f"| {r['backend']} | {fmt('sentence')} | {fmt('short')} | {fmt('sentence_bare')} | "
                   f"{fmt('short_bare')} |")
    out += ["", "**Accuracy** per language (top-1 label / determined and right at min_confidence 0.5; "
            "most frequent wrong label):", ""]
    head = ["lang"] + [f"{r['backend']}" for r in results]
    out += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(results)]
    for lang in langs:
        cells = []
        for r in results:
            a = r["accuracy"][lang]
            conf = f" ({a['confused_with']})" if a["confused_with"] and a["top1"] < 0.99 else ""
            cells.append(f"{100 * a['top1']:.1f} / {100 * a['strict']:.1f}{conf}")
        out.append(f"| {lang} | " + " | ".join(cells) + " |")
    out.append("| **mean** | " + " | ".join(f"**{100 * r['macro_top1']:.1f} / {100 * r['macro_strict']:.1f}**"
                                           for r in results) + " |")
    for r in results:
        if "by_length" not in r:
            continue
        out += ["", f"**Accuracy by length** ({r['backend']}, min_confidence 0.5, min_chars 3): the sentences cut to "
                "their first characters or words (words: the languages written with spaces)", "",
                "| snippet | snippets | decided | right, of the decided | right, of all | zh called ja |",
                "|---|---:|---:|---:|---:|---:|"]
        for row in r["by_length"]:
            zh = "-" if row["zh_called_ja"] is None else f"{100 * row['zh_called_ja']:.1f}%"
            unit = "characters" if row["unit"] == "chars" else "word" if row["n"] == 1 else "words"
            out.append(f"| first {row['n']} {unit} | {row['snippets']} "
                       f"| {100 * row['decided']:.1f}% | {100 * row['right_of_decided']:.1f}% | "
                       f"{100 * row['right_of_all']:.1f}% | {zh} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
