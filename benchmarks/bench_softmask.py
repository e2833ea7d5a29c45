"""Soft-mask training step and QA evaluation speed, measured side by side in one run.

  * one training step (forward + backward to the head scales + AdamW) as train_mask does it (LM head only at
    the positions that predict answer tokens; hooks only on the layers holding trainable heads, so backward
    stops at the lowest of them) vs the naive step (every layer hooked, the model's own loss over full
    [batch, pos, vocab] logits); same items, same weights, one random trainable head;
  * greedy evaluation of the same items with batch size 1 vs 8 (left padding).

    nice -n 10 .venv/bin/python benchmarks/bench_softmask.py                 # Gemma 3 270M, German XQuAD
    .venv/bin/python benchmarks/bench_softmask.py --model tiny --items 4     # smoke run on a tiny random model
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _rows(lang: str, n: int, data: str | None):
    from lahis_ctrl.corpora.xquad import load_qa, reference_split

    rows, split = load_qa(lang, data)
    train, test = reference_split(rows, split)
    while len(train) < n:
        train = train + train
    while len(test) < n:
        test = test + test
    return train[:n], test[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="'tiny' for a random tiny model")
    ap.add_argument("--lang", default="de")
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--data", default=os.environ.get("LAHIS_DATA_DIR") or "embedded")
    args = ap.parse_args()

    from lahis_ctrl.core.lm import greedy_generate
    from lahis_ctrl.core.architecture import describe
    from lahis_ctrl.corpora.prompts import format_prompt
    from lahis_ctrl.lahis.softmask import SoftMaskTrainer, build_example, collate, select_heads

    if args.model == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny import tiny_model, tiny_tokenizer

        model, tok = tiny_model("gemma3"), tiny_tokenizer()
    else:
        from lahis_ctrl.core.loading import load_model, load_tokenizer

        model, tok = load_model(args.model, dtype="float32"), load_tokenizer(args.model)
    for p in model.parameters():
        p.requires_grad_(False)
    spec = describe(model)
    train, test = _rows(args.lang, args.items, args.data)
    examples = [build_example(tok, r, args.lang) for r in train]
    lengths = [len(e["input_ids"]) for e in examples]
    print(f"{spec.name_or_path or type(model).__name__}: {args.items} {args.lang} items, "
          f"{sum(lengths) / len(lengths):.0f} tokens on average; torch threads {torch.get_num_threads()}")
    heads = select_heads(spec, 1, "random", seed=0)

    def full_logits_step(trainer, batch):
        from lahis_ctrl.core.control import scale_heads

        with scale_heads(model, trainer.scales, spec):
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss
        (grad,) = torch.autograd.grad(loss, [trainer.scales])
        trainer.scales.grad = grad * trainer.trainable
        trainer.optimizer.step()
        return float(loss.detach())

    timings = {}
    losses = {}
    for name in ("naive (all layers hooked, full logits)", "answer-only logits, trainable layers hooked (train_mask)"):
        trainer = SoftMaskTrainer(model, spec, heads)
        batches = [collate([e], tok.pad_token_id or 0) for e in examples]
        trainer.step(batches[0]) if name.startswith("answer") else full_logits_step(trainer, batches[0])  # warm-up
        trainer = SoftMaskTrainer(model, spec, heads)
        start = time.perf_counter()
        out = []
        for b in batches:
            out.append(trainer.step(b) if name.startswith("answer") else full_logits_step(trainer, b))
        timings[name] = (time.perf_counter() - start) / len(batches)
        losses[name] = out
    (a, ta), (b, tb) = timings.items()
    print(f"train step, {a}: {ta:.3f} s")
    print(f"train step, {b}: {tb:.3f} s   -> {ta / tb:.2f}x faster")
    same = max(abs(x - y) for x, y in zip(*losses.values()))
    print(f"  largest loss difference between the two: {same:.2e}")

    prompts = [format_prompt(r, args.lang) for r in test]
    gen = {}
    for bs in (1, 8):
        greedy_generate(model, tok, prompts[:1], max_new_tokens=2, batch_size=1)  # warm-up
        start = time.perf_counter()
        gen[bs] = greedy_generate(model, tok, prompts, max_new_tokens=10, batch_size=bs)
        timings[f"gen{bs}"] = (time.perf_counter() - start) / len(prompts)
    print(f"greedy evaluation, batch 1: {timings['gen1']:.3f} s/item; batch 8: {timings['gen8']:.3f} s/item "
          f"-> {timings['gen1'] / timings['gen8']:.2f}x")
    print(f"  continuations equal between batch 1 and batch 8: {sum(x == y for x, y in zip(gen[1], gen[8]))}/{len(prompts)}")


if __name__ == "__main__":
    main()
