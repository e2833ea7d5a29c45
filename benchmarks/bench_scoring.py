"""LAHIS scoring speed and memory, measured side by side in one run.

  * tokens/s of faithful mode, fast mode and a plain per-text loop (per text: the model's own forward
    with labels, full logits, loss.backward(), weights frozen, head scales via control.scale_heads);
  * peak memory of one forward+backward at --mem-tokens tokens with the chunked LM loss vs the model's own
    (naive) loss. On GPU: torch.cuda.max_memory_allocated. On CPU: the process's peak resident memory
    (VmHWM, reset through /proc/self/clear_refs) above the resident memory before the step.

Goals (issue 3): fast >= 3x the per-text loop; chunked peak memory <= 60% of naive.

    nice -n 10 .venv/bin/python benchmarks/bench_scoring.py            # Gemma 3 270M, 32 texts x 256 tokens
    .venv/bin/python benchmarks/bench_scoring.py --model tiny --texts 8  # smoke run on a tiny random model

Random weights of the paper's model shapes (issue 16; no weights, tokenizer or hub needed):

    python benchmarks/bench_scoring.py --shape llama-3.2-3b --random-weights          # GPU: bf16, 2048 tokens
    python benchmarks/bench_scoring.py --shape gemma-3-270m --random-weights --layers 2 --texts 8 --tokens 64
    torchrun --standalone --nproc-per-node 8 benchmarks/bench_scoring.py --shape aya-23-8b --random-weights

builds the model from a transformers config object with the real hidden size, layers, heads, KV heads,
head_dim and vocabulary (`--layers K` keeps only K layers, for CPUs: every figure is then for the shrunk
model, and the output says so), feeds it random token ids, and reports tokens/s of

  * loop: the plain per-text loop (per text: the model's own forward with labels, batch 1, loss.backward(),
    weights frozen, one scale per head through control.scale_heads);
  * faithful mode, and fast mode at each `--batch-sizes` (plus fast with `--compile`);
  * ratios fast/loop and faithful/loop;
  * MFU: model FLOP/s over the peak FLOP/s of a square matmul measured in the same run (bf16 on GPUs, fp32 on
    CPUs). FLOPs per token = 4 x matmul parameters (forward 2N, backward to the activations 2N: the weights are
    frozen, so no weight gradients) + attention 12 x layers x heads x head_dim x (keys each query attends:
    (T+1)/2 on average for causal attention over T tokens, capped by a sliding window): forward QK^T and AV,
    backward twice that. The issue's H200 table uses this definition (41% loop MFU on the 3B shape);
  * under torchrun (N ranks): the scaling efficiency = tokens/s of fast mode on N ranks / (N x tokens/s of one
    rank), both measured in the same run: rank 0 first runs every one-rank measurement alone while the other
    ranks wait, then all ranks score the same texts together. `--baseline FILE` (the --json of a one-rank run
    of the same settings) takes the one-rank figure from there instead, and skips the one-rank phase.

Goals (issue 16), printed next to the results: faithful >= 0.95x the loop; fast >= 1.2x the loop at 2048
tokens on the 3B and 8B shapes; >= 60% MFU on the 8B shape; scaling efficiency >= 0.9 per added GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _texts(tok, n: int, tokens: int, data: Path | None) -> list[str]:
    from lahis_ctrl.corpora.texts import load_texts

    if data is not None and (data / "ntrex128").is_dir():
        texts = load_texts(data / "ntrex128", "en", tokenizer=tok, passage_tokens=tokens + 16, seed=None)
    else:
        texts = load_texts("embedded", "en", seed=None)
    while len(texts) < n:
        texts = texts + texts
    return texts[:n]


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_peak(fn, device) -> float:
    """Peak bytes used by fn() above what was in use before it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base = _rss_now()
    if not _reset_peak():
        raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs) on this system")
    fn()
    return _peak() - base


# ====================================================================== random weights of real shapes (issue 16)
def _gemma_3_270m():
    from transformers import Gemma3TextConfig

    # google/gemma-3-270m: 18 layers x 4 heads (1 KV head), head_dim 256, sliding window 512 (full attention at
    # layers 5, 11, 17), vocabulary 262144, tied embeddings
    return Gemma3TextConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                            num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                            query_pre_attn_scalar=256, max_position_embeddings=32768, tie_word_embeddings=True,
                            pad_token_id=0, bos_token_id=2, eos_token_id=1)


def _llama_3_2_3b():
    from transformers import LlamaConfig

    # meta-llama/Llama-3.2-3B: 28 layers x 24 heads (8 KV heads), head_dim 128, vocabulary 128256, tied embeddings
    return LlamaConfig(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                       num_attention_heads=24, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                       rms_norm_eps=1e-5, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _aya_23_8b():
    from transformers import CohereConfig

    # CohereForAI/aya-23-8B: 32 layers x 32 heads (8 KV heads), head_dim 128, vocabulary 256000, logit_scale 0.0625
    return CohereConfig(vocab_size=256000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, logit_scale=0.0625,
                        layer_norm_eps=1e-5, use_qk_norm=False, tie_word_embeddings=True, pad_token_id=0,
                        bos_token_id=5, eos_token_id=255001)


SHAPES = {"gemma-3-270m": _gemma_3_270m, "llama-3.2-3b": _llama_3_2_3b, "aya-23-8b": _aya_23_8b}


def shape_config(name: str, layers: int | None = None):
    """The transformers config of a real model shape, optionally cut to its first `layers` layers."""
    cfg = SHAPES[name]()
    full = cfg.num_hidden_layers
    if layers is not None and layers < full:
        cfg.num_hidden_layers = layers
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = list(cfg.layer_types[:layers])
    return cfg, full


class IdTokenizer:
    """Texts that ARE token ids ("17 4 99 ..."): score_heads runs unchanged on random ids of exact lengths."""

    pad_token_id = 0

    def __call__(self, text, truncation=True, max_length=None, **kwargs):
        ids = [int(x) for x in text.split()]
        return {"input_ids": ids[:max_length] if truncation and max_length else ids}


def random_texts(n: int, lo: int, hi: int, vocab: int, seed: int = 0) -> list[str]:
    """n texts of random ids with lengths spread evenly over [lo, hi] (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [hi if n == 1 else round(lo + (hi - lo) * i / (n - 1)) for i in range(n)]
    return [" ".join(map(str, torch.randint(3, vocab, (t,), generator=g).tolist())) for t in lengths]


def matmul_params(model) -> int:
    """Parameters that multiply activations: every nn.Linear weight, the LM head included (tied or not)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def model_flops(model, spec, lengths: list[int]) -> float:
    """FLOPs of scoring texts of these lengths: per token 4 x matmul params + attention (see the docstring)."""
    from lahis_ctrl.core.architecture import text_config

    cfg = text_config(model.config)
    window = getattr(cfg, "sliding_window", None)
    kinds = getattr(cfg, "layer_types", None) or ["full_attention"] * spec.num_layers
    n4 = 4 * matmul_params(model)
    total = 0.0
    for t in lengths:
        keys = 0  # sum over layers and query positions of the keys attended
        for kind in kinds[:spec.num_layers]:
            if kind == "sliding_attention" and window:
                w = min(window, t)
                keys += w * (w + 1) // 2 + (t - w) * w
            else:
                keys += t * (t + 1) // 2
        total += n4 * t + 12 * spec.num_heads * spec.head_dim * keys
    return total


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, size: int, seconds: float = 1.0) -> float:
    """FLOP/s of a square `size` x `size` matmul in `dtype` on `device` (best of a few timed loops)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        a @ b
    sync()
    best, reps = 0.0, 1
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or best == 0.0:
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        dt = time.perf_counter() - t0
        best = max(best, 2 * size**3 * reps / dt)
        if dt < 0.05:
            reps *= 2
    return best


def _timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def shape_benchmark(args) -> dict:
    from transformers import AutoModelForCausalLM

    from lahis_ctrl.core.architecture import describe
    from lahis_ctrl.core.control import scale_heads
    from lahis_ctrl.core.lm import frozen
    from lahis_ctrl.lahis import distributed as dist
    from lahis_ctrl.lahis.scoring import score_heads

    ctx = dist.setup()  # under torchrun: joins the group, selects cuda:LOCAL_RANK
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    big = args.shape != "gemma-3-270m"
    tokens = args.tokens or ((2048 if big else 256) if cuda else 64)
    lo = args.min_tokens or (tokens if big else min(tokens, max(2, round(tokens * 160 / 256))))
    n_texts = args.texts or (64 if cuda else 8)
    sizes = [int(b) for b in (args.batch_sizes or ("1,2,4" if (cuda and tokens >= 512) else "8,16,32" if cuda else "1,4")).split(",")]
    cfg, full_layers = shape_config(args.shape, args.layers)
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()
    spec = describe(model)
    texts = random_texts(n_texts, lo, tokens, cfg.vocab_size, args.seed)
    tok = IdTokenizer()
    lengths = [len(t.split()) for t in texts]
    n_tokens = sum(lengths)
    flops = model_flops(model, spec, lengths)
    say = print if ctx.is_main else (lambda *a, **k: None)
    shrunk = f" (depth shrunk to {cfg.num_hidden_layers} of {full_layers} layers: every figure is for the shrunk model)" \
        if cfg.num_hidden_layers < full_layers else ""
    say(f"{args.shape} random weights{shrunk}: {spec.num_layers}x{spec.num_heads} heads ({spec.num_kv_heads} KV), "
        f"head_dim {spec.head_dim}, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, {matmul_params(model) / 1e9:.3f} B "
        f"matmul params, {dtype}, {device}{' ' + torch.cuda.get_device_name(device) if cuda else ''}, threads "
        f"{torch.get_num_threads()}, ranks {ctx.world_size}")
    say(f"  {n_texts} texts of {lo}-{tokens} random tokens ({n_tokens} tokens), {flops / n_tokens / 1e9:.2f} GFLOP/token")
    # measured by rank 0 alone (the other ranks wait at their first collective), like its one-rank timings
    peak = peak_matmul_flops(device, dtype, args.matmul_size or (8192 if cuda else 2048), seconds=2.0) \
        if ctx.is_main else float("nan")
    say(f"  peak {str(dtype).replace('torch.', '')} matmul: {peak / 1e12:.3f} TFLOP/s")
    kw = dict(progress=False, check_loss=False, distributed=False, max_length=tokens)

    def loop():
        m = torch.ones(spec.shape, device=device, requires_grad=True)
        with frozen(model), scale_heads(model, m, spec):
            for t in texts:
                x = torch.tensor([tok(t)["input_ids"]], device=device)
                model(input_ids=x, labels=x, use_cache=False).loss.backward()
                m.grad = None

    runs = [] if args.no_loop else [("loop", loop)]
    if not args.no_faithful:
        runs.append(("faithful", lambda: score_heads(model, tok, texts, mode="faithful", **kw)))
    for b in sizes:
        runs.append((f"fast b{b}", lambda b=b: score_heads(model, tok, texts, mode="fast", batch_size=b, **kw)))
        if args.compile:
            runs.append((f"fast b{b} compiled", lambda b=b: score_heads(model, tok, texts, mode="fast", batch_size=b,
                                                                         compile=True, **kw)))
    result = {"shape": args.shape, "layers": cfg.num_hidden_layers, "full_layers": full_layers, "device": str(device),
              "dtype": str(dtype), "texts": n_texts, "min_tokens": lo, "tokens": tokens, "total_tokens": n_tokens,
              "flops_per_token": flops / n_tokens, "peak_flops": peak, "world_size": ctx.world_size,
              "threads": torch.get_num_threads(), "tokens_per_s": {}, "mfu": {}}
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    if ctx.is_main and baseline is None:  # one rank alone (the others wait at the barrier below)
        warm = texts[-max(sizes):]
        score_heads(model, tok, warm, mode="fast", batch_size=max(sizes), **kw)  # CUDA / allocator warm-up
        for name, fn in runs:
            if name.endswith("compiled"):  # compile once, outside the timing
                score_heads(model, tok, warm, mode="fast", batch_size=int(name.split()[1][1:]), compile=True, **kw)
            dt = _timed(fn, device)
            result["tokens_per_s"][name] = n_tokens / dt
            result["mfu"][name] = flops / dt / peak
            say(f"  {name:22s} {dt:8.2f} s  {n_tokens / dt:10.1f} tokens/s  MFU {100 * flops / dt / peak:5.1f}%")
        tps = result["tokens_per_s"]
        fast = {k: v for k, v in tps.items() if k.startswith("fast")}
        best = max(fast, key=fast.get)
        result["best_fast"] = best
        if "loop" in tps:
            result["fast_over_loop"] = tps[best] / tps["loop"]
            say(f"  fast / loop:     {result['fast_over_loop']:.2f}x ({best})   goal >= 1.2x at 2048 tokens on the 3B "
                f"and 8B shapes{'' if big and tokens == 2048 else ' (not this setting)'}")
            if "faithful" in tps:
                result["faithful_over_loop"] = tps["faithful"] / tps["loop"]
                say(f"  faithful / loop: {result['faithful_over_loop']:.2f}x   goal >= 0.95x")
        say(f"  MFU of {best}: {100 * result['mfu'][best]:.1f}%   goal >= 60% on the 8B shape"
            f"{'' if args.shape == 'aya-23-8b' and not shrunk else ' (not this setting)'}")
    if ctx.active:
        if baseline is not None:
            one = baseline["tokens_per_s"][baseline["best_fast"]]
            b = int(baseline["best_fast"].split()[1][1:])
            result["baseline"] = str(args.baseline)
        else:
            mine = result.get("best_fast")  # rank 0's choice is every rank's
            best, one = ctx.broadcast_object((mine, result["tokens_per_s"].get(mine)))
            b = int(best.split()[1][1:])
        ctx.barrier()
        dt = _timed(lambda: (score_heads(model, tok, texts, mode="fast", batch_size=b, **{**kw, "distributed": True}),
                             ctx.barrier()), device)
        tps_n = n_tokens / dt
        eff = tps_n / (ctx.world_size * one)
        result.update(ranks_tokens_per_s=tps_n, one_rank_tokens_per_s=one, scaling_efficiency=eff, ranks_batch_size=b)
        say(f"  {ctx.world_size} ranks, fast b{b}: {dt:8.2f} s  {tps_n:10.1f} tokens/s  (one rank {one:.1f})  "
            f"scaling efficiency {eff:.2f}   goal >= 0.9")
    if args.json and ctx.is_main:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    dist.shutdown()
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="model name/path, or 'tiny' for a tiny random Gemma 3")
    ap.add_argument("--texts", type=int, default=None, help="texts (default 32; with --shape: 64 on GPUs, 8 on CPUs)")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per text (default 256; with --shape: 2048, or "
                    "256 for gemma-3-270m, on GPUs; 64 on CPUs)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mem-tokens", type=int, default=1024)
    ap.add_argument("--dtype", default=None, help="model dtype (default float32; with --shape: bfloat16 on GPUs, "
                    "float32 on CPUs)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    shapes = ap.add_argument_group("random weights of a real model shape (issue 16)")
    shapes.add_argument("--shape", choices=sorted(SHAPES), help="build this shape from a transformers config")
    shapes.add_argument("--random-weights", action="store_true", help="required with --shape: no weights are loaded")
    shapes.add_argument("--layers", type=int, help="keep only this many layers (CPU runs); figures are for the shrunk model")
    shapes.add_argument("--min-tokens", type=int, help="shortest text (lengths spread evenly up to --tokens; "
                        "default: --tokens, or 160 for gemma-3-270m)")
    shapes.add_argument("--batch-sizes", default=None, help="fast-mode batch sizes, comma-separated (default 1,2,4 on "
                        "GPUs at 2048 tokens, 8,16,32 below 512 tokens; 1,4 on CPUs)")
    shapes.add_argument("--compile", action="store_true", help="also time fast mode with compile=True")
    shapes.add_argument("--no-loop", action="store_true", help="skip the per-text loop")
    shapes.add_argument("--no-faithful", action="store_true", help="skip faithful mode")
    shapes.add_argument("--matmul-size", type=int, help="side of the square matmul that measures the peak "
                        "(default 8192 on GPUs, 2048 on CPUs)")
    shapes.add_argument("--baseline", type=Path, help="under torchrun: one-rank results (--json of a plain run)")
    shapes.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.shape:
        if not args.random_weights:
            ap.error("--shape builds a model with random weights: add --random-weights")
        return shape_benchmark(args)

    args.texts = args.texts or 32
    args.tokens = args.tokens or 256
    args.dtype = args.dtype or "float32"
    from lahis_ctrl.core.control import scale_heads
    from lahis_ctrl.core.architecture import describe
    from lahis_ctrl.core.lm import frozen as _frozen, sequence_losses, tokenize_texts
    from lahis_ctrl.lahis.scoring import score_heads

    if args.model == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny import tiny_model, tiny_tokenizer

        model, tok = tiny_model("gemma3"), tiny_tokenizer()
    else:
        from lahis_ctrl import load_model, load_tokenizer

        model = load_model(args.model, dtype=args.dtype)
        tok = load_tokenizer(args.model)
        if torch.cuda.is_available():
            model = model.cuda()
    device = next(model.parameters()).device
    spec = describe(model)
    data = Path(os.environ["LAHIS_DATA_DIR"]) if os.environ.get("LAHIS_DATA_DIR") else ROOT.parent / "shared" / "data"
    texts = _texts(tok, args.texts, args.tokens, data if data.is_dir() else None)
    ids = tokenize_texts(tok, texts, args.tokens)
    n_tokens = sum(len(x) for x in ids)
    print(f"{spec.name_or_path}: {spec.num_layers}x{spec.num_heads} heads, vocab {model.get_output_embeddings().weight.shape[0]}, "
          f"{len(ids)} texts, {n_tokens} tokens (<= {args.tokens} each), device {device}, threads {torch.get_num_threads()}")

    def plain_loop():
        m = torch.ones(spec.shape, requires_grad=True)
        grads = []
        with _frozen(model), scale_heads(model, m, spec):
            for seq in ids:
                x = torch.tensor([seq], device=device)
                model(input_ids=x, labels=x, use_cache=False).loss.backward()
                grads.append(m.grad.clone())
                m.grad = None
        return torch.stack(grads)

    timings = {}
    for name, fn in [
        ("plain per-text loop", plain_loop),
        ("faithful", lambda: score_heads(model, tok, texts, mode="faithful", max_length=args.tokens, progress=False,
                                         check_loss=False)),
        ("fast", lambda: score_heads(model, tok, texts, mode="fast", max_length=args.tokens, batch_size=args.batch_size,
                                     progress=False, check_loss=False)),
    ]:
        dt = _timed(fn, device)
        timings[name] = n_tokens / dt
        print(f"  {name:22s} {dt:8.1f} s  {timings[name]:9.1f} tokens/s")
    base = timings["plain per-text loop"]
    print(f"  ratio fast / plain loop:     {timings['fast'] / base:.2f}x   (goal >= 3x)")
    print(f"  ratio faithful / plain loop: {timings['faithful'] / base:.2f}x")

    # memory: one fwd+bwd at mem-tokens tokens, one text
    long_text = " ".join(texts * 8)
    seq = tokenize_texts(tok, [long_text], args.mem_tokens)[0]
    x = torch.tensor([seq], device=device)

    def step(chunked: bool):
        m = torch.ones(spec.shape, requires_grad=True)
        with _frozen(model), scale_heads(model, m, spec):
            if chunked:
                loss = sequence_losses(model, x, torch.ones_like(x))[0].sum()
            else:
                loss = model(input_ids=x, labels=x, use_cache=False).loss
            loss.backward()
        return float(loss.detach())

    step(True)  # warm-up: allocator pools and lazy initialisation should not count for either
    chunked = measure_peak(lambda: step(True), device)
    naive = measure_peak(lambda: step(False), device)
    print(f"  peak memory at {len(seq)} tokens: chunked {chunked / 2**20:.0f} MiB, naive {naive / 2**20:.0f} MiB, "
          f"ratio {chunked / max(naive, 1):.2f} (goal <= 0.60)")
    result = {"model": spec.name_or_path, "device": str(device), "texts": len(ids), "tokens": n_tokens,
              "tokens_per_s": timings, "fast_over_plain": timings["fast"] / base,
              "faithful_over_plain": timings["faithful"] / base, "mem_tokens": len(seq),
              "peak_chunked_bytes": chunked, "peak_naive_bytes": naive, "peak_ratio": chunked / max(naive, 1)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
