"""Greedy generation speed on Gemma 3 270M: unmasked vs hooked mask vs folded mask, as ratios from one run.

Goals: folded >= 0.99 and hooked >= 0.97 of unmasked tokens/s. The three conditions are interleaved round by
round in a shuffled order and the ratio is the median of per-round ratios, because absolute times drift on
shared machines. Usage: python benchmarks/bench_controller.py [--model gemma-3-270m] [--rounds 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from lahis_ctrl import HeadMask, apply_head_mask, describe, fold_head_mask, load_model, load_tokenizer

PROMPTS = ["The history of the city begins", "Die Geschichte der Stadt beginnt", "La historia de la ciudad comienza",
           "शहर का इतिहास शुरू होता है"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--heads", type=int, default=20, help="number of heads the mask changes (spread over layers)")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model, dtype="float32")
    tok = load_tokenizer(args.model)
    tok.padding_side = "left"
    spec = describe(model)
    # a LAHIS-like mask: `heads` heads spread over the layers, scales in (0, 2)
    flat = torch.randperm(spec.num_layers * spec.num_heads)[: args.heads]
    values = torch.ones(spec.shape)
    values.view(-1)[flat] = torch.rand(args.heads) * 2
    mask = HeadMask.from_tensor(values, model)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)

    def generate() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        dt = time.perf_counter() - t
        return (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0] / dt

    def hooked() -> float:
        with apply_head_mask(model, mask):
            return generate()

    def folded() -> float:
        with fold_head_mask(model, mask):
            return generate()

    conditions = {"unmasked": generate, "hooked": hooked, "folded": folded}
    for fn in conditions.values():  # warm-up
        fn()
    speeds = {k: [] for k in conditions}
    for _ in range(args.rounds):
        order = list(conditions)
        random.shuffle(order)
        for name in order:
            speeds[name].append(conditions[name]())
    base = speeds["unmasked"]
    print(f"model {spec.name_or_path}: {spec.num_layers}x{spec.num_heads} heads, mask changes {args.heads} heads; "
          f"batch {len(PROMPTS)}, {args.new_tokens} new tokens, {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"{'condition':<10} {'median tok/s':>12} {'ratio vs unmasked (median of rounds)':>38}")
    for name, vals in speeds.items():
        ratio = statistics.median(v / b for v, b in zip(vals, base))
        print(f"{name:<10} {statistics.median(vals):12.1f} {ratio:38.3f}")


if __name__ == "__main__":
    main()
