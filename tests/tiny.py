"""Tiny random causal LMs built from config objects, and a tokenizer trained offline: milliseconds to build.

Used by the tests, the benchmarks' smoke runs and subprocess tests (save_tiny writes a from_pretrained dir).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

# A few sentences per language so the byte-level BPE learns merges for several scripts.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Berlin ist die Hauptstadt.",
    "El rápido zorro marrón salta sobre el perro perezoso. Madrid es la capital de España.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "भारत की राजधानी नई दिल्ली है। यह एक बड़ा शहर है।",
    "敏捷的棕色狐狸跳过了懒狗。北京是中国的首都。",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Context: Question: Answer: 1 2 3 4 5 6 7 8 9 0",
]

VOCAB = 512


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def _configs():
    from transformers import (CohereConfig, Gemma3TextConfig, GPT2Config, GraniteConfig, LlamaConfig, MistralConfig,
                              Phi3Config, Qwen2Config)

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return {
        # GQA (2 KV heads for 4 query heads) where the architecture has it
        "llama": lambda: LlamaConfig(**common, num_key_value_heads=2),
        "mistral": lambda: MistralConfig(**common, num_key_value_heads=2, sliding_window=None),
        "qwen2": lambda: Qwen2Config(**common, num_key_value_heads=2),
        "gemma3": lambda: Gemma3TextConfig(**{**common, "num_hidden_layers": 4}, num_key_value_heads=1, head_dim=16,
                                           sliding_window=8, layer_types=["sliding_attention", "sliding_attention",
                                                                          "full_attention", "sliding_attention"]),
        "cohere": lambda: CohereConfig(**common, num_key_value_heads=4),
        "phi3": lambda: Phi3Config(**common, num_key_value_heads=2),
        # the logit transforms the LM core must reproduce: Gemma's final softcapping, Granite's logits_scaling and
        # its other multipliers (Cohere's logit_scale is in "cohere")
        "gemma3_softcap": lambda: Gemma3TextConfig(**{**common, "num_hidden_layers": 2}, num_key_value_heads=1,
                                                   head_dim=16, sliding_window=8, final_logit_softcapping=3.0,
                                                   layer_types=["sliding_attention", "full_attention"]),
        "granite": lambda: GraniteConfig(**common, num_key_value_heads=2, logits_scaling=4.0, embedding_multiplier=2.0,
                                         residual_multiplier=0.5, attention_multiplier=0.2),
        "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=256,
                                   bos_token_id=1, eos_token_id=2),
    }


ARCHS = ("llama", "mistral", "qwen2", "gemma3", "cohere", "phi3", "gpt2")
# ARCHS plus the configs that exist for the logit transforms (the LM core and head-layout tests run them all)
ALL_ARCHS = ARCHS + ("gemma3_softcap", "granite")


def tiny_model(arch: str = "llama", seed: int = 0, attn_implementation: str = "eager", dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    config = _configs()[arch]()
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    # random init leaves some norms/weights at trivial values; perturb everything so heads differ
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.to(dtype).eval()


def save_tiny(path: str | Path, arch: str = "llama", seed: int = 0) -> Path:
    """Write a tiny model + tokenizer that AutoModelForCausalLM.from_pretrained(path) loads."""
    path = Path(path)
    tiny_model(arch, seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


class Interrupt(Exception):
    """The crash `interrupt_after` simulates."""


def interrupt_after(model, calls: int, message: str = ""):
    """Make the decoder raise Interrupt on its `calls`+1-th forward: a crash or Ctrl-C in the middle of a run.
    Returns a function that puts the decoder's own forward back."""
    decoder = model.get_decoder()
    original = decoder.forward
    count = {"n": 0}

    def forward(*a, **kw):
        count["n"] += 1
        if count["n"] > calls:
            raise Interrupt(message or f"test crash after {calls} forward passes")
        return original(*a, **kw)

    decoder.forward = forward
    return lambda: setattr(decoder, "forward", original)
