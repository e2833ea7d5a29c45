"""Foundation invariants on tiny random models: introspection, HeadMask files, hooks, folding, export."""

import json
import subprocess
import sys

import pytest
import torch
from tiny import ARCHS, tiny_model, tiny_tokenizer

import lahis_ctrl
from lahis_ctrl import (ArchSpec, HeadMask, LahisError, MaskMismatchError, UnknownArchitectureError, apply_head_mask,
                        describe, fold_head_mask)
from lahis_ctrl.core import head_layout
from lahis_ctrl.core.control import scale_heads
from lahis_ctrl.core.architecture import output_projections

MAIN_ARCHS = ("llama", "mistral", "qwen2", "gemma3", "cohere")


def _ids(tok, text="The quick brown fox jumps over the lazy dog. Berlin ist die Hauptstadt."):
    return torch.tensor([tok(text)["input_ids"]])


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


# ------------------------------------------------------------------ introspection
@pytest.mark.parametrize("arch", ARCHS)
def test_describe_known_architectures(arch):
    model = tiny_model(arch)
    spec = describe(model)
    tc = model.config
    assert spec.num_layers == tc.num_hidden_layers
    assert spec.num_heads == tc.num_attention_heads
    assert len(spec.o_proj_names) == spec.num_layers
    projections = output_projections(model, spec)
    expected_kv = getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads
    assert spec.num_kv_heads == expected_kv
    for p in projections:  # the input of every projection is heads x head_dim features
        in_features = p.weight.shape[1] if spec.layout == "linear" else p.weight.shape[0]
        assert in_features == spec.num_heads * spec.head_dim


def test_unknown_architecture_names_the_override():
    model = tiny_model("llama")
    model.config.model_type = "my_new_arch"
    with pytest.raises(UnknownArchitectureError) as err:
        describe(model)
    msg = str(err.value)
    assert "my_new_arch" in msg and "ArchSpec" in msg and "--arch" in msg and "{layer}" in msg
    # the override then works, as a dict, an ArchSpec or a JSON string
    for arch in ({"o_proj": "model.layers.{layer}.self_attn.o_proj"},
                 ArchSpec(o_proj="model.layers.{layer}.self_attn.o_proj", num_heads=4, head_dim=16),
                 '{"o_proj": "model.layers.{layer}.self_attn.o_proj"}'):
        spec = describe(model, arch)
        assert spec.shape == (3, 4) and spec.model_type == "my_new_arch"
    lahis_ctrl.register_architecture("my_new_arch", ArchSpec(o_proj="model.layers.{layer}.self_attn.o_proj"))
    try:
        assert describe(model).shape == (3, 4)
    finally:
        from lahis_ctrl.core.architecture import _REGISTERED
        _REGISTERED.pop("my_new_arch")


def test_bad_override_is_explained():
    model = tiny_model("llama")
    with pytest.raises(UnknownArchitectureError, match="do not exist"):
        describe(model, {"o_proj": "model.layers.{layer}.attn.nope"})
    with pytest.raises(UnknownArchitectureError, match="contradicts the model's config"):
        describe(model, {"o_proj": "model.layers.{layer}.self_attn.o_proj", "num_heads": 8})
    with pytest.raises(UnknownArchitectureError, match="no '{layer}' placeholder"):  # every layer -> one module
        describe(model, {"o_proj": "model.layers.0.self_attn.o_proj"})
    with pytest.raises(UnknownArchitectureError, match="positive whole number"):
        describe(model, {"o_proj": "model.layers.{layer}.self_attn.o_proj", "head_dim": -4})
    with pytest.raises(UnknownArchitectureError, match="unknown keys"):
        describe(model, {"o_proj": "x", "heads": 3})


# ------------------------------------------------------------------ hooks
@pytest.mark.parametrize("arch", MAIN_ARCHS + ("phi3", "gpt2"))
def test_all_ones_mask_is_bit_exact(arch, tok):
    model = tiny_model(arch)
    ids = _ids(tok)
    base = _logits(model, ids)
    # the identity mask installs no hook at all; an explicit all-ones tensor through scale_heads multiplies by 1.0
    with apply_head_mask(model, HeadMask.ones(model)):
        same = _logits(model, ids)
    with scale_heads(model, torch.ones(describe(model).shape)):
        times_one = _logits(model, ids)
    assert torch.equal(base, same)
    assert torch.equal(base, times_one)


@pytest.mark.parametrize("arch", MAIN_ARCHS + ("phi3", "gpt2"))
def test_zeroing_a_head_equals_zeroing_its_weight_columns(arch, tok):
    model = tiny_model(arch)
    spec = describe(model)
    ids = _ids(tok)
    layer, head = spec.num_layers - 1, 1
    with apply_head_mask(model, HeadMask.from_heads(model, [(layer, head)], 0.0)):
        hooked = _logits(model, ids)
    weight = output_projections(model, spec)[layer].weight
    original = weight.detach().clone()
    with torch.no_grad():
        head_layout.head_block(weight, head, spec.head_dim, spec.layout).zero_()
    try:
        zeroed = _logits(model, ids)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert torch.equal(hooked, zeroed)
    assert not torch.equal(hooked, _logits(model, ids))  # the head mattered


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_hooks_work_with_attention_implementations(attn, tok):
    model = tiny_model("llama", attn_implementation=attn)
    ids = _ids(tok)
    mask = HeadMask.from_heads(model, [(0, 0), (2, 3)], 0.0)
    with apply_head_mask(model, mask):
        hooked = _logits(model, ids)
    with fold_head_mask(model, mask):
        folded = _logits(model, ids)
    torch.testing.assert_close(hooked, folded, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hooked, _logits(model, ids))


def test_gqa_masks_query_heads_not_kv_heads(tok):
    # llama tiny: 4 query heads share 2 KV heads; masking query head 0 must differ from masking 0 and 1 together
    model = tiny_model("llama")
    assert describe(model).num_kv_heads == 2
    ids = _ids(tok)
    with apply_head_mask(model, HeadMask.from_heads(model, [(1, 0)], 0.0)):
        one = _logits(model, ids)
    with apply_head_mask(model, HeadMask.from_heads(model, [(1, 0), (1, 1)], 0.0)):
        two = _logits(model, ids)
    assert not torch.equal(one, two)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype, tok):
    model = tiny_model("llama", dtype=dtype)
    ids = _ids(tok)
    base = _logits(model, ids)
    with apply_head_mask(model, HeadMask.ones(model)):
        assert torch.equal(base, _logits(model, ids))
    mask = HeadMask.from_heads(model, [(0, 2)], 0.5)
    with apply_head_mask(model, mask):
        hooked = _logits(model, ids)
    with fold_head_mask(model, mask):  # 0.5 is exact in every float format: fold == hook bit for bit
        folded = _logits(model, ids)
    assert hooked.dtype == dtype
    assert torch.equal(hooked, folded)


def test_hooks_removed_after_exception(tok):
    model = tiny_model("mistral")
    ids = _ids(tok)
    base = _logits(model, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with apply_head_mask(model, HeadMask.from_heads(model, [(0, 0), (1, 1)], 0.0)):
            raise RuntimeError("boom")
    assert all(not p._forward_pre_hooks for p in output_projections(model))
    assert torch.equal(base, _logits(model, ids))


def test_nested_contexts_multiply(tok):
    model = tiny_model("qwen2")
    ids = _ids(tok)
    a = HeadMask.from_heads(model, [(0, 1), (2, 2)], 0.5)
    b = HeadMask.from_heads(model, [(0, 1), (1, 3)], 0.25)
    with apply_head_mask(model, a):
        with apply_head_mask(model, b):
            nested = _logits(model, ids)
        only_a = _logits(model, ids)
    with apply_head_mask(model, a * b):
        combined = _logits(model, ids)
    torch.testing.assert_close(nested, combined, rtol=1e-6, atol=1e-6)
    with apply_head_mask(model, a):
        assert torch.equal(only_a, _logits(model, ids))
    assert all(not p._forward_pre_hooks for p in output_projections(model))


def _lm_loss(model, ids):
    # computed here in float64 (transformers' own loss upcasts logits to float32, too coarse for a finite difference)
    logits = model(ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def test_scale_heads_gradient_matches_finite_difference(tok):
    model = tiny_model("llama").double()
    ids = _ids(tok)
    scales = torch.ones(describe(model).shape, dtype=torch.float64, requires_grad=True)
    with scale_heads(model, scales):
        loss = _lm_loss(model, ids)
    loss.backward()
    eps = 1e-3  # RoPE tables stay float32 in a float64 model: a smaller step only measures their rounding
    for layer, head in [(0, 0), (1, 3), (2, 1)]:
        losses = []
        for sign in (1, -1):
            s = torch.ones_like(scales).detach()
            s[layer, head] += sign * eps
            with torch.no_grad(), scale_heads(model, s):
                losses.append(_lm_loss(model, ids).item())
        fd = (losses[0] - losses[1]) / (2 * eps)
        assert scales.grad[layer, head].item() == pytest.approx(fd, rel=1e-3, abs=1e-6)


# ------------------------------------------------------------------ folding
@pytest.mark.parametrize("arch", MAIN_ARCHS + ("gpt2",))
def test_fold_matches_hook_and_undo_restores_bit_for_bit(arch, tok):
    model = tiny_model(arch)
    ids = _ids(tok)
    base = _logits(model, ids)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = HeadMask.from_tensor(torch.rand(describe(model).shape) * 3, model)
    with apply_head_mask(model, mask):
        hooked = _logits(model, ids)
    handle = fold_head_mask(model, mask)
    folded = _logits(model, ids)
    assert all(not p._forward_pre_hooks for p in output_projections(model))  # folding adds no hooks
    torch.testing.assert_close(folded, hooked, rtol=1e-4, atol=1e-4)
    handle.undo()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(base, _logits(model, ids))


def test_fold_refuses_quantized_weights():
    model = tiny_model("llama")
    proj = output_projections(model)[0]
    proj.weight = torch.nn.Parameter(torch.zeros_like(proj.weight, dtype=torch.int8), requires_grad=False)
    with pytest.raises(LahisError, match="apply_head_mask"):
        fold_head_mask(model, HeadMask.from_heads(model, [(0, 0)], 0.0))


# ------------------------------------------------------------------ HeadMask files and validation
@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
def test_mask_round_trip(tmp_path, suffix):
    model = tiny_model("gemma3")
    values = torch.rand(describe(model).shape) * 2
    mask = HeadMask.from_tensor(values, model, language="de", method="lahis-soft-mask", extra={"epochs": 2})
    path = mask.save(tmp_path / f"m{suffix}")
    loaded = HeadMask.load(path)
    assert torch.equal(loaded.values, mask.values)
    assert loaded.facts() == mask.facts()
    assert loaded.extra == {"epochs": 2}
    loaded.validate(model)


def test_safetensors_layout(tmp_path):
    from safetensors import safe_open

    model = tiny_model("llama")
    path = HeadMask.from_heads(model, [(1, 2)], 0.0, language="hi").save(tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == ["mask"]
        meta = f.metadata()
        assert f.get_tensor("mask").dtype == torch.float32
    assert json.loads(meta["model_type"]) == "llama" and json.loads(meta["language"]) == "hi"
    assert json.loads(meta["num_layers"]) == 3 and json.loads(meta["head_dim"]) == 16


def test_mask_for_another_model_is_refused(tok):
    llama, gemma = tiny_model("llama"), tiny_model("gemma3")
    mask = HeadMask.from_heads(gemma, [(0, 0)], 0.0)  # 4 layers, gemma3
    with pytest.raises(MaskMismatchError) as err:
        with apply_head_mask(llama, mask):
            pass
    assert "4 layers" in str(err.value) and "3 layers" in str(err.value)
    mistral = tiny_model("mistral")  # same shape as llama, different model_type
    with pytest.raises(MaskMismatchError, match="model_type mismatch.*llama.*mistral"):
        fold_head_mask(mistral, HeadMask.from_heads(llama, [(0, 0)], 0.0))
    assert all(not p._forward_pre_hooks for p in output_projections(llama))


def test_bad_masks_raise_clear_errors(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(MaskMismatchError, match="NaN or inf"):
        HeadMask.from_tensor(torch.full((3, 4), float("nan")), model)
    with pytest.raises(MaskMismatchError, match=r"\[num_layers, num_heads\]"):
        HeadMask(torch.ones(12), model_type="llama", head_dim=16)
    with pytest.raises(MaskMismatchError, match="outside"):
        HeadMask.from_heads(model, [(3, 0)], 0.0)
    with pytest.raises(LahisError, match="file not found"):
        HeadMask.load(tmp_path / "missing.safetensors")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LahisError, match="not valid JSON"):
        HeadMask.load(tmp_path / "bad.json")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(LahisError, match="not a readable safetensors"):
        HeadMask.load(tmp_path / "bad.safetensors")
    with pytest.raises(LahisError, match=".safetensors or .json"):
        HeadMask.ones(model).save(tmp_path / "m.npy")
    with pytest.raises(LahisError, match="from_reference"):
        (tmp_path / "r.pth").write_bytes(b"x")
        HeadMask.load(tmp_path / "r.pth")


def test_from_reference_reads_pth_without_pickle(tmp_path):
    model = tiny_model("llama")
    values = torch.rand(3, 4, dtype=torch.bfloat16)  # the reference keeps its mask in bfloat16
    torch.save(values, tmp_path / "head_mask.pth")
    mask = HeadMask.from_reference(tmp_path / "head_mask.pth", model, language="zh")
    assert torch.equal(mask.values, values.float()) and mask.method == "reference-import"
    torch.save(torch.ones(5, 4), tmp_path / "wrong.pth")
    with pytest.raises(MaskMismatchError, match="shape mismatch"):
        HeadMask.from_reference(tmp_path / "wrong.pth", model)

    import datetime

    torch.save({"obj": datetime.date(2020, 1, 1)}, tmp_path / "pickled.pth")  # needs pickle to load: weights_only refuses
    with pytest.raises(LahisError, match="weights_only"):
        HeadMask.from_reference(tmp_path / "pickled.pth", model)


# ------------------------------------------------------------------ export
def test_export_round_trip(tmp_path, tok):
    from transformers import AutoModelForCausalLM

    from lahis_ctrl import export_folded

    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = _ids(tok)
    mask = HeadMask.from_tensor(torch.tensor([[1, 0, 1, 2.5], [1, 1, 1, 1], [0.5, 1, 0, 1]]), model, language="es")
    with apply_head_mask(model, mask):
        hooked = _logits(model, ids)
    out = export_folded(model, tok, mask, tmp_path / "export")
    for k, v in model.state_dict().items():  # the caller's model is left as it was
        assert torch.equal(v, before[k])
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(_logits(reloaded, ids), hooked, rtol=1e-5, atol=1e-5)
    note = json.loads((out / "lahis_mask.json").read_text())  # the mask itself, as JSON, with a note
    assert note["language"] == "es" and [0, 1] in note["changed_heads"]
    assert HeadMask.load(out / "lahis_mask.json").facts() == mask.facts()
    with pytest.raises(LahisError, match="not empty"):
        export_folded(model, tok, mask, out)


def test_cli_export_and_info(tmp_path):
    from tiny import save_tiny

    model_dir = save_tiny(tmp_path / "tiny", "llama")
    mask_path = HeadMask.from_heads(tiny_model("llama"), [(0, 1)], 0.0).save(tmp_path / "m.safetensors")
    env_py = [sys.executable, "-m", "lahis_ctrl.cli"]
    info = subprocess.run(env_py + ["info", str(model_dir)], capture_output=True, text=True, check=True)
    assert "3 layers x 4 heads" in info.stdout and "KV heads:   2" in info.stdout and "head_dim:   16" in info.stdout
    out = subprocess.run(env_py + ["export", "--model", str(model_dir), "--mask", str(mask_path), "--out",
                                   str(tmp_path / "exp")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "exp" / "model.safetensors").is_file()
    # a mask for another model: one clear line, exit status 2, nothing written
    other = HeadMask.from_heads(tiny_model("gemma3"), [(0, 1)], 0.0).save(tmp_path / "g.safetensors")
    bad = subprocess.run(env_py + ["export", "--model", str(model_dir), "--mask", str(other), "--out",
                                   str(tmp_path / "exp2")], capture_output=True, text=True)
    assert bad.returncode == 2 and "shape mismatch" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "exp2").exists()


def test_import_is_light():
    out = subprocess.run([sys.executable, "-c", "import sys, lahis_ctrl; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ loading
def test_load_model_from_local_dir(tmp_path, tok):
    from tiny import save_tiny

    from lahis_ctrl import load_model, load_tokenizer

    path = save_tiny(tmp_path / "tiny", "qwen2")
    model = load_model(str(path), dtype="bfloat16", device_map="auto")
    assert model.dtype == torch.bfloat16 and not model.training
    ids = _ids(load_tokenizer(str(path)))
    with apply_head_mask(model, HeadMask.from_heads(model, [(0, 0)], 0.0)):
        masked = _logits(model, ids)
    assert masked.dtype == torch.bfloat16 and not torch.equal(masked, _logits(model, ids))
    with pytest.raises(LahisError, match="unknown dtype"):
        load_model(str(path), dtype="float8")
    with pytest.raises(LahisError, match="could not load model"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(LahisError, match="unknown embedded model"):
        from lahis_ctrl.core.loading import embedded_model_dir
        embedded_model_dir("gemma-9")


def test_cli_accepts_dashed_option_names_comma_lists_and_bare_flags():
    from lahis_ctrl.cli import commands
    from lahis_ctrl.cli.options import normalize_argv

    found = commands()
    norm = lambda *a: normalize_argv(list(a), found)[0]  # noqa: E731
    assert norm("audit", "x.jsonl", "--max-off-target", "0.1", "--skip-bad=true", "--lang_field", "a-b") \
        == ["audit", "x.jsonl", "--max_off_target", "0.1", "--skip_bad", "true", "--lang_field", "a-b"]
    assert norm("info", "M", "--modules") == ["info", "M", "--modules", "true"]
    assert norm("info", "--modules", "M") == ["info", "--modules", "true", "M"]  # a bare flag before a positional
    assert norm("info", "M", "--modules", "--arch", "{}") == ["info", "M", "--modules", "true", "--arch", "{}"]
    assert norm("ppl", "s", "--languages", "en,de") == ["ppl", "s", "--languages", "[en, de]"]
    assert norm("ppl", "s", "--languages", "en") == ["ppl", "s", "--languages", "[en]"]  # a list of one
    assert norm("ppl", "--languages", "[en, de]") == ["ppl", "--languages", "[en, de]"]
    assert norm("evaluate", "--mask", "none") == ["evaluate", "--mask", "[none]"]
    assert norm("reproduce", "--scoring.languages=en,de,es") == ["reproduce", "--scoring.languages", "[en, de, es]"]
    assert normalize_argv(["-q", "-v", "-qq", "info", "M"], found) == (["info", "M"], -2)  # the package's logger


def test_atomic_writes_keep_old_file_on_error_and_use_normal_permissions(tmp_path):
    import os
    import stat

    from lahis_ctrl.core.fileio import atomic_path, write_text

    path = write_text(tmp_path / "report.md", "complete")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_current_umask()
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temp file left behind


def _current_umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
