"""LAHIS scoring speed and memory, measured side by side in one run.

  * tokens/s of faithful mode, fast mode and a plain per-text loop (per text: the model's own forward
    with labels, full logits, loss.backward(), weights frozen, head scales via control.scale_heads);
  * peak memory of one forward+backward at --mem-tokens tokens with the chunked LM loss vs the model's own
    (naive) loss. On GPU: torch.cuda.max_memory_allocated. On CPU: the process's peak resident memory
    (VmHWM, reset through /proc/self/clear_refs) above the resident memory before the step.

Goals (issue 3): fast >= 3x the per-text loop; chunked peak memory <= 60% of naive.

    nice -n 10 .venv/bin/python benchmarks/bench_scoring.py            # Gemma 3 270M, 32 texts x 256 tokens
    .venv/bin/python benchmarks/bench_scoring.py --model tiny --texts 8  # smoke run on a tiny random model
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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="model name/path, or 'tiny' for a tiny random Gemma 3")
    ap.add_argument("--texts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mem-tokens", type=int, default=1024)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    from lahis_ctrl.core.control import scale_heads
    from lahis_ctrl.core.architecture import describe
    from lahis_ctrl.lahis.scoring import _frozen, score_heads, sequence_losses, tokenize_texts

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
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
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
