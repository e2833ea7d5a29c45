"""`lahis demo`: the main job on the embedded default model, end to end, with no data and no hub."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

DEMO_PROMPTS = {
    "en": "The capital of France is",
    "de": "Die Hauptstadt von Deutschland ist",
    "es": "La capital de España es",
    "hi": "भारत की राजधानी",
}


def demo(model: str = "gemma-3-270m", out: Path = Path("runs/demo"), max_new_tokens: int = 12,
         heads: Optional[list[tuple[int, int]]] = None) -> None:
    """Load a model, mask a few attention heads and show greedy outputs with and without the mask.

    Args:
        model: hub id, local directory or the embedded 'gemma-3-270m' (installed from PyPI, no hub needed).
        out: folder for the demo's files (the mask used).
        max_new_tokens: tokens to generate per prompt.
        heads: (layer, head) pairs to zero; default: every head of the first two layers.
    """
    from .control import apply_head_mask
    from .generation import greedy_generate
    from .introspect import describe
    from .loading import load_model, load_tokenizer
    from .mask import HeadMask

    m = load_model(model, dtype="float32")
    tok = load_tokenizer(model)
    spec = describe(m)
    print(f"{spec.name_or_path}: {spec.num_layers} layers x {spec.num_heads} heads "
          f"({spec.num_kv_heads} KV heads), head_dim {spec.head_dim}")
    if heads is None:
        heads = [(layer, h) for layer in range(min(2, spec.num_layers)) for h in range(spec.num_heads)]
    mask = HeadMask.from_heads(m, heads, scale=0.0, method="demo-zero")
    mask_path = mask.save(Path(out) / "demo_mask.safetensors")
    prompts = list(DEMO_PROMPTS.values())
    plain = greedy_generate(m, tok, prompts, max_new_tokens=max_new_tokens)
    with apply_head_mask(m, mask):
        masked = greedy_generate(m, tok, prompts, max_new_tokens=max_new_tokens)
    print(f"\nmasked heads (layer, head): {heads}  -> mask saved to {mask_path}\n")
    for lang, prompt, a, b in zip(DEMO_PROMPTS, prompts, plain, masked):
        print(f"[{lang}] {prompt!r}\n   original: {a!r}\n   masked:   {b!r}")
