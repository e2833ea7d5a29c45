"""One head layout behind every backend: hooks == fold == vLLM's weight-stream fold == base + LoRA delta.

The vLLM fold is the plugin's generator called as a plain function on the model's own state dict (no vLLM
needed); the LoRA delta is core.head_layout.lora_factors added to the weights. Every tiny architecture,
Linear (columns) and GPT-2 Conv1D (rows) layouts, GQA, fp32 and bf16.
"""

import copy

import pytest
import torch
from tiny import ALL_ARCHS, tiny_model

from lahis_ctrl.core import head_layout
from lahis_ctrl.core.architecture import describe, output_projections
from lahis_ctrl.core.control import apply_head_mask, fold_head_mask, row_scales
from lahis_ctrl.core.mask import HeadMask
from lahis_ctrl.integrations.vllm import plugin

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11, 64, 8]])


def _mask(model, seed=0):
    spec = describe(model)
    gen = torch.Generator().manual_seed(seed)
    values = torch.ones(spec.shape)
    values[0, 1] = 0.0                     # a silenced head
    values[-1, 0] = 3.0                    # an amplified head
    values[spec.num_layers // 2] = torch.rand(spec.num_heads, generator=gen) * 2  # a whole layer of arbitrary scales
    return HeadMask.from_tensor(values, spec)


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits.float()


def _stream_folded(model, mask):
    """A copy of `model` whose weights came through the vLLM plugin's checkpoint-stream fold."""
    spec = describe(model)
    suffix, layout = plugin._o_proj_locator(model.config)
    applied = {}
    folded = dict(plugin.fold_weight_stream(model.state_dict().items(), mask, spec,
                                            plugin.o_proj_weight_pattern(suffix), layout, applied))
    assert sorted(applied) == list(range(spec.num_layers))  # every layer's o_proj came through
    clone = copy.deepcopy(model)
    clone.load_state_dict(folded)
    return clone


def _lora_applied(model, mask):
    """A copy of `model` with W + B @ A on every masked layer (B, A from head_layout.lora_factors)."""
    spec = describe(model)
    clone = copy.deepcopy(model)
    for layer, module in enumerate(output_projections(clone, spec)):
        row = mask.values[layer]
        if bool((row == 1).all()):
            continue
        k = int((row != 1).sum()) * spec.head_dim
        a, b = head_layout.lora_factors(module.weight, row, spec.head_dim, spec.layout, r=k, dtype=torch.float64)
        delta = b @ a  # [out, in]
        with torch.no_grad():
            w = module.weight.double()
            module.weight.copy_((w + (delta if spec.layout == "linear" else delta.t())).to(module.weight.dtype))
    return clone


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_hooks_fold_vllm_stream_and_lora_agree(arch):
    model = tiny_model(arch)
    mask = _mask(model)
    spec = describe(model)
    with apply_head_mask(model, mask):
        hooked = _logits(model)
    with fold_head_mask(model, mask):
        folded = _logits(model)
        folded_weights = [p.weight.detach().clone() for p in output_projections(model, spec)]
    stream = _stream_folded(model, mask)
    # the in-place fold and the stream fold multiply the same numbers the same way: identical bits
    for w_fold, w_stream in zip(folded_weights, output_projections(stream, spec)):
        assert torch.equal(w_fold, w_stream.weight)
    assert torch.equal(_logits(stream), folded)
    # hooks scale activations, folds scale weights: equal up to float rounding
    torch.testing.assert_close(folded, hooked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(_lora_applied(model, mask)), folded, rtol=1e-5, atol=1e-5)
    # a head at 0 silences exactly the weight entries head_block names
    w0 = folded_weights[0]
    assert torch.count_nonzero(head_layout.head_block(w0, 1, spec.head_dim, spec.layout)) == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bf16_fold_and_stream_are_bit_identical_and_undo_restores(arch):
    model = tiny_model(arch, dtype=torch.bfloat16)
    mask = _mask(model, seed=1)
    spec = describe(model)
    before = [p.weight.detach().clone() for p in output_projections(model, spec)]
    with fold_head_mask(model, mask):
        folded = [p.weight.detach().clone() for p in output_projections(model, spec)]
    stream = [m.weight for m in output_projections(_stream_folded(model, mask), spec)]
    assert all(torch.equal(a, b) for a, b in zip(folded, stream))
    assert all(torch.equal(a, p.weight) for a, p in zip(before, output_projections(model, spec)))


def test_row_scale_is_identity_at_one_and_its_gradient_is_the_per_row_reduction():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.bfloat16, requires_grad=True)  # [batch, pos, heads * head_dim]
    s = torch.ones(3, 2, requires_grad=True)                             # [batch, heads], head_dim 4
    y = head_layout.scale_rows(x, s, head_dim=4)
    assert torch.equal(y, x)
    g = torch.randn_like(y)
    y.backward(g)
    expected = (g.float() * x.float()).sum(1).view(3, 2, 4).sum(-1)      # float32 sums per row and head
    torch.testing.assert_close(s.grad, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(x.grad, g)


def test_row_scales_give_each_row_its_own_gradient():
    model = tiny_model("llama")
    spec = describe(model)
    scales = torch.ones(2, *spec.shape, requires_grad=True)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with row_scales(model, spec, scales):
        model(ids).logits[0].sum().backward()  # only row 0's output
    assert scales.grad[0].abs().sum() > 0 and torch.count_nonzero(scales.grad[1]) == 0


def test_weight_layout_names_and_bad_layout():
    assert head_layout.head_features(2, 16) == slice(32, 48)
    assert head_layout.in_dim("linear") == 1 and head_layout.in_dim("conv1d") == 0
    with pytest.raises(ValueError, match="layout"):
        head_layout.in_dim("rows")
    assert torch.equal(head_layout.feature_scales(torch.tensor([1.0, 0.0]), 2), torch.tensor([1.0, 1.0, 0.0, 0.0]))
