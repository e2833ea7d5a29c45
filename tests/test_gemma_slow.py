"""The foundation on the real Gemma 3 270M (installed from PyPI): slow, minutes on 2 CPU cores."""

import pytest
import torch

from lahis_ctrl import HeadMask, apply_head_mask, describe, fold_head_mask
from lahis_ctrl.core.lm import greedy_generate

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "Die Hauptstadt von Deutschland ist", "La capital de España es"]


def test_gemma_layout(gemma):
    spec = describe(gemma[0])
    assert (spec.model_type, spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == \
        ("gemma3_text", 18, 4, 1, 256)


def test_gemma_masks_change_greedy_output_only_when_they_should(gemma):
    model, tok = gemma
    base = greedy_generate(model, tok, PROMPTS, max_new_tokens=8)
    with apply_head_mask(model, HeadMask.ones(model)):
        assert greedy_generate(model, tok, PROMPTS, max_new_tokens=8) == base
    # zeroing every head of the first three layers (12 of 72) changes what the model says
    zeroed = HeadMask.from_heads(model, [(layer, h) for layer in range(3) for h in range(4)], 0.0)
    with apply_head_mask(model, zeroed):
        masked = greedy_generate(model, tok, PROMPTS, max_new_tokens=8)
    assert masked != base
    with fold_head_mask(model, zeroed):
        folded = greedy_generate(model, tok, PROMPTS, max_new_tokens=8)
    assert folded == masked
    assert greedy_generate(model, tok, PROMPTS, max_new_tokens=8) == base  # undo restored the model


def test_gemma_fold_matches_hook_on_logits(gemma):
    model, tok = gemma
    ids = tok(PROMPTS[1], return_tensors="pt")["input_ids"]
    mask = HeadMask.from_tensor(torch.linspace(0, 3, 72).reshape(18, 4), model)
    with torch.no_grad():
        with apply_head_mask(model, mask):
            hooked = model(ids).logits
        with fold_head_mask(model, mask):
            folded = model(ids).logits
    torch.testing.assert_close(folded, hooked, rtol=1e-4, atol=1e-3)
