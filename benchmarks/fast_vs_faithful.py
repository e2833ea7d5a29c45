"""How well fast-mode LAHIS scores agree with faithful (reference) scores on a real model.

Scores the same texts both ways and prints Spearman rank correlations (scores, importance, negative
fraction) and top-k overlaps. Texts: NTREX-128 (../shared/data or $LAHIS_DATA_DIR) joined into passages.

    nice -n 10 .venv/bin/python benchmarks/fast_vs_faithful.py --languages en hi --texts 16 --tokens 256
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks from 0, ties sharing their average rank (negative fractions tie a lot)."""
    vals, inverse, counts = torch.unique(x.flatten().double(), return_inverse=True, return_counts=True)
    end = counts.cumsum(0)
    return ((end - counts + end - 1) / 2)[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def topk_overlap(a, b, k: int) -> float:
    return len(set(a.top_heads(k)) & set(b.top_heads(k))) / k


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--languages", nargs="+", default=["en"])
    ap.add_argument("--texts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("runs/fast_vs_faithful"))
    args = ap.parse_args(argv)

    from lahis_ctrl import load_model, load_tokenizer
    from lahis_ctrl.corpora.texts import load_texts
    from lahis_ctrl.lahis.scoring import score_heads

    data = Path(os.environ.get("LAHIS_DATA_DIR") or ROOT.parent / "shared" / "data") / "ntrex128"
    model = load_model(args.model, dtype="float32")
    tok = load_tokenizer(args.model)
    results = {}
    for lang in args.languages:
        texts = load_texts(data, lang, n=args.texts, seed=0, tokenizer=tok, passage_tokens=args.tokens)
        t0 = time.perf_counter()
        fast = score_heads(model, tok, texts, mode="fast", max_length=args.tokens, batch_size=args.batch_size,
                           language=lang, source=f"file:{data}", progress=False)
        t1 = time.perf_counter()
        faithful = score_heads(model, tok, texts, mode="faithful", max_length=args.tokens, language=lang,
                               source=f"file:{data}", progress=False)
        t2 = time.perf_counter()
        args.out.mkdir(parents=True, exist_ok=True)
        fast.save(args.out / f"{lang}.fast.safetensors")
        faithful.save(args.out / f"{lang}.faithful.safetensors")
        r = {
            "texts": fast.num_texts, "tokens": fast.num_tokens,
            "spearman_scores": spearman(fast.scores, faithful.scores),
            "spearman_importance": spearman(fast.importance, faithful.importance),
            "spearman_negative_fraction": spearman(fast.negative_fraction, faithful.negative_fraction),
            "top3_overlap": topk_overlap(fast, faithful, 3), "top5_overlap": topk_overlap(fast, faithful, 5),
            "top10_overlap": topk_overlap(fast, faithful, 10),
            "fast_top5": fast.top_heads(5), "faithful_top5": faithful.top_heads(5),
            "final_m_range": [min(min(r) for r in faithful.extra["final_m"]), max(max(r) for r in faithful.extra["final_m"])],
            "seconds_fast": t1 - t0, "seconds_faithful": t2 - t1,
        }
        results[lang] = r
        print(f"{lang}: {r['texts']} texts, {r['tokens']} tokens | Spearman scores {r['spearman_scores']:.3f}, "
              f"importance {r['spearman_importance']:.3f}, neg-frac {r['spearman_negative_fraction']:.3f} | "
              f"top-3 {r['top3_overlap']:.2f} top-5 {r['top5_overlap']:.2f} top-10 {r['top10_overlap']:.2f} | "
              f"fast {r['fast_top5']} faithful {r['faithful_top5']} | final m in {r['final_m_range']} | "
              f"{r['seconds_fast']:.0f} s fast, {r['seconds_faithful']:.0f} s faithful", flush=True)
    (args.out / "agreement.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
