"""LoRA export of head masks (lahis_ctrl.integrations.vllm.lora): the math, the files, PEFT in transformers, the CLI.

No vLLM needed: these run in the main suite. Serving the adapter in vLLM is tested in test_vllm.py.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from lahis_ctrl import HeadMask, LahisError, MaskMismatchError, apply_head_mask, fold_head_mask
from lahis_ctrl.core.architecture import describe, output_projections
from lahis_ctrl.core.head_layout import lora_factors as _lora_factors
from lahis_ctrl.integrations.vllm.lora import VLLM_LORA_RANKS, export_lora, lora_rank
from tiny import save_tiny, tiny_model


def _mask(model, scale_b=2.5):
    # layer 0: heads 1 and 3 silenced (2 heads -> k = 32 -> r 32); layer 2: head 0 scaled up; layer 1 untouched
    mask = HeadMask.from_heads(model, [(0, 1), (0, 3)], 0.0)
    mask.values[2, 0] = scale_b
    return mask


def test_rank_is_padded_to_a_vllm_rank():
    assert lora_rank(16) == 16
    assert lora_rank(17) == 32
    assert lora_rank(300) == 320
    assert lora_rank(1) == 1
    assert lora_rank(513) == 513  # beyond vLLM: kept exact for PEFT
    assert set(VLLM_LORA_RANKS) >= {8, 16, 32, 64, 128, 256, 320, 512}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_factors_reproduce_the_scaled_weight(arch):
    model = tiny_model(arch)
    spec = describe(model)
    mask = _mask(model)
    weight = output_projections(model, spec)[0].weight.detach()
    a, b = _lora_factors(weight, mask.values[0], spec.head_dim, spec.layout, 64, torch.float64)
    w = weight.double() if spec.layout == "linear" else weight.double().t()  # [out, in]
    scales = mask.values[0].double().repeat_interleave(spec.head_dim)
    # W diag(s) == W + B A, in float64 to the last bit of the float32 inputs
    assert torch.allclose(w + b @ a, w * scales, atol=1e-12, rtol=0)
    k = 2 * spec.head_dim
    assert torch.equal(a[k:], torch.zeros_like(a[k:])) and torch.equal(b[:, k:], torch.zeros_like(b[:, k:]))
    assert torch.equal(a[:k].sum(1), torch.ones(k, dtype=a.dtype))  # one 1 per row: a column selector
    # silencing a head makes B exactly minus its columns
    cols = torch.arange(spec.head_dim, 2 * spec.head_dim)
    assert torch.equal(b[:, :spec.head_dim], -w[:, cols])


def test_adapter_files(tmp_path):
    model = tiny_model("llama")
    spec = describe(model)
    out = export_lora(model, _mask(model), tmp_path / "ad")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 32 and cfg["lora_alpha"] == cfg["r"]
    assert cfg["target_modules"] == [spec.o_proj_names[0], spec.o_proj_names[2]]  # layer 1 has no change
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert sorted(tensors) == sorted(f"base_model.model.{spec.o_proj_names[i]}.lora_{x}.weight"
                                     for i in (0, 2) for x in "AB")
    assert tensors[f"base_model.model.{spec.o_proj_names[0]}.lora_A.weight"].shape == (32, spec.num_heads * spec.head_dim)
    assert HeadMask.load(out / "lahis_mask.safetensors").changed_heads() == [(0, 1), (0, 3), (2, 0)]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_peft_loads_the_adapter_and_matches_the_hooked_model(tmp_path, arch):
    peft = pytest.importorskip("peft")
    model = tiny_model(arch)
    mask = _mask(model)
    out = export_lora(model, mask, tmp_path / "ad")
    x = torch.randint(3, 500, (2, 16))
    with torch.no_grad():
        with apply_head_mask(model, mask):
            want = model(x).logits
        unmasked = model(x).logits
        peft_model = peft.PeftModel.from_pretrained(tiny_model(arch), str(out)).eval()
        got = peft_model(x).logits
    assert (want - unmasked).abs().max() > 1e-2  # the mask matters, so the comparison means something
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    # merging the adapter gives the folded weights
    merged = peft_model.merge_and_unload()
    reference = tiny_model(arch)
    with fold_head_mask(reference, mask):
        for a, b in zip(output_projections(merged), output_projections(reference)):
            torch.testing.assert_close(a.weight, b.weight, atol=1e-6, rtol=0)


def test_bad_input(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(LahisError, match="changes no head"):
        export_lora(model, HeadMask.ones(model), tmp_path / "a")
    other = HeadMask.ones(tiny_model("gemma3"))
    other.values[0, 0] = 0
    with pytest.raises(MaskMismatchError):
        export_lora(model, other, tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("keep")
    with pytest.raises(LahisError, match="not empty"):
        export_lora(model, _mask(model), tmp_path / "c")
    assert (tmp_path / "c" / "x").read_text() == "keep"
    export_lora(model, _mask(model), tmp_path / "c", overwrite=True)
    assert not (tmp_path / "c" / "x").exists()


def test_cli_export_lora(tmp_path):
    from lahis_ctrl.cli import main

    model_dir = save_tiny(tmp_path / "m", "llama")
    mask_path = _mask(tiny_model("llama")).save(tmp_path / "mask.safetensors")
    rc = main(["export", "--model", str(model_dir), "--mask", str(mask_path), "--out", str(tmp_path / "ad"),
               "--format", "lora"])
    assert rc == 0
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["r"] == 32
    assert main(["export", "--model", str(model_dir), "--mask", str(mask_path), "--out", str(tmp_path / "x"),
                 "--format", "nope"]) == 2
