"""Cost of the model identity every artifact records: core.identity.weights_fingerprint vs hashing every weight.

    python benchmarks/bench_identity.py [--shape 1b|3b|8b|tiny] [--dtype bfloat16] [--device cpu|cuda] [--repeats 3]

Builds a random-weight model of a real architecture's shape (Llama-3.2-1B / -3B, Llama-3-8B; no download) on the
device, then times, side by side in this one run:
- the fingerprint (a fixed sample of at most 4,096 values per tensor, hashed on the bfloat16 grid), and
- a full sha256 of every parameter's bytes (what a content hash of the weights would cost),
and prints both, their ratio and whether the goal holds (the fingerprint under 1 s for the shape). The fingerprint
reads a few MB whatever the model's size, so the ratio grows with the model. Random weights are right for speed,
not for anything else.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import statistics
import time

import torch

from lahis_ctrl.core.identity import weights_fingerprint

GOAL_S = 1.0
SHAPES = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "tiny": (64, 3, 4, 2, 128, 512),
    "1b": (2048, 16, 32, 8, 8192, 128256),
    "3b": (3072, 28, 24, 8, 8192, 128256),
    "8b": (4096, 32, 32, 8, 14336, 128256),
}


def build(shape: str, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, layers, heads, kv, inter, vocab = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab)
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def full_hash(model) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (the first CUDA calls, page faults)
    out = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    model = build(args.shape, getattr(torch, args.dtype), args.device)
    params = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "CPU"
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads; Llama {args.shape} shape, "
          f"{params / 1e9:.2f} B parameters, {args.dtype}, on {args.device}; median of {args.repeats} runs\n")
    fp = timed(lambda: weights_fingerprint(model), args.repeats)
    full = timed(lambda: full_hash(model), args.repeats)
    print("| what | seconds |")
    print("|---|---:|")
    print(f"| weights_fingerprint | {fp:.3f} |")
    print(f"| sha256 of every weight | {full:.3f} |")
    print(f"\nfull hash / fingerprint: {full / fp:.0f}x; fingerprint goal < {GOAL_S:g} s: "
          f"{'met' if fp < GOAL_S else 'NOT met'}")


if __name__ == "__main__":
    main()
