"""PEFT formats of a head mask: the IA3 adapter equals the hooks bit for bit (float32), loads with PeftModel and
AutoPeftModelForCausalLM from the base it records; the LoRA export records the same base; every export writes a
model card. No vLLM needed."""

import json

import pytest
import torch
import yaml

from lahis_ctrl import HeadMask, LahisError, MaskMismatchError, apply_head_mask, export_folded
from lahis_ctrl.core.architecture import describe
from lahis_ctrl.core.export import export_ia3, ia3_adapter
from tiny import ARCHS, save_tiny, tiny_model, tiny_tokenizer

peft = pytest.importorskip("peft")


def _mask(model):
    spec = describe(model)
    mask = HeadMask.from_heads(model, [(0, 1), (spec.num_layers - 1, spec.num_heads - 1)], 0.0, language="hi")
    mask.values[1, 0] = 2.7  # not a power of two: the product must still be the hooks' own
    return mask


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_ia3_adapter_equals_the_hooks_bit_for_bit(tmp_path, arch):
    model = tiny_model(arch)
    mask = _mask(model)
    x = torch.randint(3, 500, (2, 12))
    with apply_head_mask(model, mask):
        want = _logits(model, x)
    assert (want - _logits(model, x)).abs().max() > 1e-3  # the mask matters
    out = export_ia3(model, mask, tmp_path / "ia3")
    peft_model = peft.PeftModel.from_pretrained(tiny_model(arch), str(out)).eval()
    assert torch.equal(_logits(peft_model, x), want)
    # merged into the weights it is the fold (one rounding: close, not bit-equal to the hooks)
    torch.testing.assert_close(_logits(peft_model.merge_and_unload(), x), want, atol=1e-5, rtol=1e-5)


def test_adapter_from_the_config_alone_is_the_same_adapter(tmp_path):
    model = tiny_model("gemma3")
    mask = _mask(model)
    from_model = ia3_adapter(model, mask, base_model="b")
    from_config = ia3_adapter(model.config, mask, base_model="b")
    assert from_model[0] == from_config[0]
    assert from_model[1].keys() == from_config[1].keys()
    assert all(torch.equal(from_model[1][k], from_config[1][k]) for k in from_model[1])
    config, tensors = from_model
    assert config["peft_type"] == "IA3" and config["target_modules"] == config["feedforward_modules"]
    assert config["target_modules"] == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj",
                                        "model.layers.3.self_attn.o_proj"]  # layer 2 has no change: no vector
    vector = tensors["base_model.model.model.layers.1.self_attn.o_proj.ia3_l"]
    assert vector.shape == (1, 64) and vector.dtype == torch.float32
    assert torch.equal(vector[0, :16], torch.full((16,), 2.7)) and torch.equal(vector[0, 16:], torch.ones(48))


def test_auto_peft_loads_the_adapter_from_the_absolute_base_it_records(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    base_dir = save_tiny(tmp_path / "base", "llama")
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    mask = _mask(model)
    monkeypatch.chdir(tmp_path)
    out = export_ia3(model, mask, "adapters/hi")  # a relative output folder; the base is recorded absolute
    config = json.loads((tmp_path / "adapters/hi/adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir.resolve())
    x = torch.randint(3, 500, (2, 10))
    with apply_head_mask(model, mask):
        want = _logits(model, x)
    monkeypatch.chdir("/")
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / out)).eval()
    assert torch.equal(_logits(auto, x), want)


def test_lora_export_records_the_same_base_and_loads_with_auto_peft(tmp_path):
    from transformers import AutoModelForCausalLM

    from lahis_ctrl.integrations.vllm.lora import export_lora

    base_dir = save_tiny(tmp_path / "base", "llama")
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    mask = _mask(model)
    lora = export_lora(model, mask, tmp_path / "lora")
    ia3 = export_ia3(model, mask, tmp_path / "ia3")
    lora_config = json.loads((lora / "adapter_config.json").read_text())
    ia3_config = json.loads((ia3 / "adapter_config.json").read_text())
    assert lora_config["base_model_name_or_path"] == ia3_config["base_model_name_or_path"] == str(base_dir.resolve())
    x = torch.randint(3, 500, (2, 10))
    with apply_head_mask(model, mask):
        want = _logits(model, x)
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(str(lora)).eval()
    torch.testing.assert_close(_logits(auto, x), want, atol=2e-5, rtol=0)  # exact in real arithmetic
    # IA3 is the smaller file by far: one float per input feature of the changed layers
    assert (ia3 / "adapter_model.safetensors").stat().st_size < (lora / "adapter_model.safetensors").stat().st_size / 4


def test_every_export_writes_a_model_card(tmp_path):
    from lahis_ctrl.integrations.vllm.lora import export_lora

    base_dir = save_tiny(tmp_path / "base", "llama")
    model = tiny_model("llama")
    model.name_or_path = str(base_dir)
    mask = _mask(model)
    outs = {"ia3": export_ia3(model, mask, tmp_path / "ia3"), "lora": export_lora(model, mask, tmp_path / "lora"),
            "folded": export_folded(model, tiny_tokenizer(), mask, tmp_path / "folded")}
    for kind, out in outs.items():
        card = (out / "README.md").read_text()
        header = yaml.safe_load(card.split("---")[1])
        assert "head-mask" in header["tags"] and header["language"] == ["hi"], kind
        assert "base_model" not in header  # a local folder is no Hub id: the Hub field stays empty
        for layer, head in mask.changed_heads():
            assert f"| {layer} | {head} | {float(mask.values[layer, head]):.6g} |" in card, kind
        assert mask.model_identity["weights_fingerprint"] in card
    assert "--max-lora-rank 16" in (outs["lora"] / "README.md").read_text()
    assert "do not apply the mask again" in (outs["folded"] / "README.md").read_text()
    # the folded checkpoint carries its mask as JSON: vLLM loads every *.safetensors of a model folder as weights
    folded = outs["folded"]
    assert sorted(p.name for p in folded.glob("*.safetensors")) == ["model.safetensors"]
    note = json.loads((folded / "lahis_mask.json").read_text())
    assert "do NOT apply the mask again" in note["note"] and [0, 1] in note["changed_heads"]
    assert torch.equal(HeadMask.load(folded / "lahis_mask.json").values, mask.values)
    # an adapter folder is itself a mask reference
    assert torch.equal(HeadMask.load(str(outs["ia3"])).values, mask.values)


def test_ia3_refusals(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(LahisError, match="changes no head"):
        export_ia3(model, HeadMask.ones(model), tmp_path / "a")
    other = _mask(tiny_model("gemma3"))
    with pytest.raises(MaskMismatchError):
        export_ia3(model, other, tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep").write_text("mine")
    with pytest.raises(LahisError, match="not empty"):
        export_ia3(model, _mask(model), tmp_path / "c")
    assert (tmp_path / "c" / "keep").read_text() == "mine"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_export_ia3(tmp_path, capsys):
    from lahis_ctrl.cli import main

    model_dir = save_tiny(tmp_path / "m", "gpt2")
    mask_path = _mask(tiny_model("gpt2")).save(tmp_path / "mask.safetensors")
    assert main(["export", "--model", str(model_dir), "--mask", str(mask_path), "--out", str(tmp_path / "ad"),
                 "--format", "ia3", "--base-model", "org/gpt2-tiny"]) == 0
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/gpt2-tiny" and config["fan_in_fan_out"] is True
    assert "wrote" in capsys.readouterr().out
    assert main(["export", "--model", str(model_dir), "--mask", str(mask_path), "--out", str(tmp_path / "x"),
                 "--format", "ia4"]) == 2
    assert not (tmp_path / "x").exists()
