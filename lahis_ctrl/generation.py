"""Batched greedy generation that returns only the newly generated text (sliced token ids, never a
string-stripped prompt)."""

from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 10, batch_size: int = 8,
                    progress: bool = False, add_special_tokens: bool = True) -> list[str]:
    """Greedy continuations of `prompts`, batched with left padding.

    The continuation is decoded from the generated token ids alone (output[:, prompt_len:]), so text of
    the prompt can never leak into it.
    """
    from tqdm.auto import tqdm

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # so every row's continuation starts at the same column
    device = next(model.parameters()).device
    outputs: list[str] = []
    try:
        batches = range(0, len(prompts), batch_size)
        for start in tqdm(batches, desc="generate", disable=not progress, unit="batch"):
            chunk = list(prompts[start:start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=tokenizer.pad_token_id, top_p=None, top_k=None, temperature=None)
            new_ids = out[:, enc["input_ids"].shape[1]:]  # [batch, new_tokens]
            outputs.extend(tokenizer.batch_decode(new_ids, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
    return outputs
