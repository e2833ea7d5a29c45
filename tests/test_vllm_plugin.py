"""The vLLM plugin's load-time fold, without vLLM: the checkpoint stream, the load guard, mask sources.

vLLM's loader is replaced by a fake one that streams a transformers state dict the way vLLM's
DefaultModelLoader.get_all_weights does; the wrappers under test are the ones the plugin installs.
"""

from types import SimpleNamespace

import pytest
import torch

from lahis_ctrl import HeadMask, LahisError, MaskMismatchError, fold_head_mask
from lahis_ctrl.core.architecture import describe, output_projections
from lahis_ctrl.integrations.vllm import CONFIG_KEY, MASK_ENV, plugin
from tiny import tiny_model


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    monkeypatch.delenv(MASK_ENV, raising=False)
    monkeypatch.setattr(plugin, "_STATE", plugin._State())


def _mask(model):
    mask = HeadMask.from_heads(model, [(0, 1), (2, 3)], 0.0)
    mask.values[2, 0] = 3.0
    return mask  # layer 1 untouched


def _engine(model, additional=None):
    """Fake (vllm_config, model_config) and a loader whose load_model consumes get_all_weights."""
    model_config = SimpleNamespace(hf_config=model.config, model="tiny")
    vllm_config = SimpleNamespace(model_config=model_config, additional_config=additional or {})

    class Loader:
        def __init__(self, state_dict, prefix="", stream=True):
            self.state_dict, self.prefix, self.stream = state_dict, prefix, stream

        def get_all_weights(self, model_config, model):
            return ((self.prefix + k, v) for k, v in self.state_dict.items())

        def load_model(self, vllm_config, model_config):
            if not self.stream:  # like load_format='dummy': no checkpoint stream at all
                return {}
            return dict(self.get_all_weights(model_config, None))

    Loader.get_all_weights = plugin._wrap_get_all_weights(Loader.get_all_weights)
    Loader.load_model = plugin._wrap_load_model(Loader.load_model)
    return vllm_config, model_config, Loader


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_streamed_fold_equals_fold_head_mask_bit_for_bit(tmp_path, monkeypatch, arch):
    model = tiny_model(arch)
    spec = describe(model)
    mask = _mask(model)
    monkeypatch.setenv(MASK_ENV, str(mask.save(tmp_path / "m.safetensors")))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    vllm_config, model_config, Loader = _engine(model)
    loaded = Loader(state).load_model(vllm_config, model_config)
    with fold_head_mask(model, mask):
        folded = {n + ".weight": m.weight.detach().clone() for n, m in zip(spec.o_proj_names, output_projections(model, spec))}
    for layer, name in enumerate(spec.o_proj_names):
        key = name + ".weight"
        assert torch.equal(loaded[key], folded[key])
        if layer == 1:
            assert loaded[key] is state[key]  # untouched layers are passed through, not copied
    others = [k for k in state if k not in folded]
    assert all(loaded[k] is state[k] for k in others)
    assert sorted(plugin._STATE.applied) == list(range(spec.num_layers))


def test_checkpoint_prefixes_are_matched(tmp_path):
    model = tiny_model("llama")
    mask = _mask(model)
    vllm_config, model_config, Loader = _engine(model, {CONFIG_KEY: str(mask.save(tmp_path / "m.json"))})
    state = model.state_dict()
    loaded = Loader(state, prefix="language_model.").load_model(vllm_config, model_config)
    key = "language_model.model.layers.0.self_attn.o_proj.weight"
    assert torch.equal(loaded[key][:, 16:32], torch.zeros(64, 16))


def test_a_load_that_cannot_fold_stops_the_engine(tmp_path, monkeypatch):
    model = tiny_model("llama")
    monkeypatch.setenv(MASK_ENV, str(_mask(model).save(tmp_path / "m.safetensors")))
    vllm_config, model_config, Loader = _engine(model)
    with pytest.raises(LahisError, match=r"NOT applied to layers \[0, 2\]"):
        Loader(model.state_dict(), stream=False).load_model(vllm_config, model_config)
    partial = {k: v for k, v in model.state_dict().items() if "layers.2." not in k}
    with pytest.raises(LahisError, match=r"NOT applied to layers \[2\]"):
        Loader(partial).load_model(vllm_config, model_config)
    quantized = dict(model.state_dict())
    quantized["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(64, 64, dtype=torch.int8)
    with pytest.raises(LahisError, match="cannot fold the head mask into 'model.layers.0.self_attn.o_proj.weight'"):
        Loader(quantized).load_model(vllm_config, model_config)


def test_no_mask_passes_everything_through(tmp_path, monkeypatch):
    model = tiny_model("llama")
    vllm_config, model_config, Loader = _engine(model)
    state = model.state_dict()
    loader = Loader(state)
    loaded = loader.load_model(vllm_config, model_config)
    assert all(loaded[k] is v for k, v in state.items())
    # an all-ones mask is no mask: nothing is touched
    monkeypatch.setenv(MASK_ENV, str(HeadMask.ones(model).save(tmp_path / "ones.safetensors")))
    loaded = loader.load_model(vllm_config, model_config)
    assert all(loaded[k] is v for k, v in state.items()) and plugin._STATE.mask is None


def test_draft_models_are_left_alone(tmp_path, monkeypatch):
    model = tiny_model("llama")
    monkeypatch.setenv(MASK_ENV, str(_mask(model).save(tmp_path / "m.safetensors")))
    vllm_config, _, Loader = _engine(model)
    draft_config = SimpleNamespace(hf_config=tiny_model("gemma3").config, model="draft")
    state = tiny_model("gemma3").state_dict()
    loaded = Loader(state).load_model(vllm_config, draft_config)
    assert all(loaded[k] is v for k, v in state.items())


def test_mask_sources(tmp_path, monkeypatch):
    model = tiny_model("llama")
    a = str(_mask(model).save(tmp_path / "a.safetensors"))
    b = str(HeadMask.from_heads(model, [(1, 1)]).save(tmp_path / "b.safetensors"))
    assert plugin.configured_mask_path({}) == (None, "")
    monkeypatch.setenv(MASK_ENV, a)
    assert plugin.configured_mask_path(None) == (a, f"${MASK_ENV}")
    assert plugin.configured_mask_path({CONFIG_KEY: a})[1] == f"additional_config['{CONFIG_KEY}']"
    with pytest.raises(LahisError, match="two different head masks"):
        plugin.configured_mask_path({CONFIG_KEY: b})


def test_mismatched_or_missing_masks_are_refused(tmp_path):
    llama = tiny_model("llama")
    other = _mask(tiny_model("gemma3")).save(tmp_path / "gemma.safetensors")
    with pytest.raises(MaskMismatchError, match=r"from \$LAHIS_MASK .* cannot be served with tiny: shape mismatch"):
        plugin.load_checked_mask(str(other), "$LAHIS_MASK", llama.config, "tiny")
    with pytest.raises(LahisError, match="file not found"):
        plugin.load_checked_mask(str(tmp_path / "nope.safetensors"), "$LAHIS_MASK", llama.config, "tiny")
    # what the front end checks before any engine process starts
    spec = plugin.config_spec(llama.config)
    assert (spec.num_layers, spec.num_heads, spec.head_dim, spec.model_type) == (3, 4, 16, "llama")


def test_refusals_the_engine_would_otherwise_die_on_or_serve_wrongly(tmp_path, monkeypatch, capsys):
    from tiny import save_tiny

    llama = tiny_model("llama")
    model_dir = save_tiny(tmp_path / "model", "llama")
    inside = _mask(llama).save(model_dir / "mask.safetensors")  # vLLM would read it as a weight file
    with pytest.raises(LahisError, match="inside the model folder"):
        plugin.load_checked_mask(str(inside), "$LAHIS_MASK", llama.config, str(model_dir))
    huge = HeadMask.from_heads(llama, [(0, 1)], 1e6).save(tmp_path / "huge.safetensors")
    with pytest.raises(LahisError, match=r"scales must lie in \[0, 100\]"):
        plugin.load_checked_mask(str(huge), "$LAHIS_MASK", llama.config, "tiny")
    assert plugin.load_checked_mask(str(huge), "$LAHIS_MASK", llama.config, "tiny",
                                    {plugin.ALLOW_EXTREME_KEY: "true"}) is not None
    folded = SimpleNamespace(**{**llama.config.to_dict(), "lahis_folded_mask": {"method": "manual", "language": "de",
                                                                               "changed_heads": [[0, 1]]}})
    folded.get_text_config = lambda: folded
    ok = _mask(llama).save(tmp_path / "ok.safetensors")
    with pytest.raises(LahisError, match="already has a head mask folded"):
        plugin.load_checked_mask(str(ok), "$LAHIS_MASK", folded, "tiny")
    # under vLLM's own command line a refusal is one line and exit 2, before any engine process starts
    config = SimpleNamespace(additional_config={CONFIG_KEY: str(huge)},
                             model_config=SimpleNamespace(hf_config=llama.config, model="tiny"))
    wrapped = plugin._wrap_create_engine_config(lambda self, *a, **k: config)
    with pytest.raises(LahisError):
        wrapped(None)  # a library call keeps the exception
    monkeypatch.setattr("sys.argv", ["/usr/bin/vllm", "serve", "tiny"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        wrapped(None)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("lahis_ctrl: error: head mask from")


def test_plugin_availability_is_reported(monkeypatch):
    import importlib.metadata as md

    ours = SimpleNamespace(name="lahis_ctrl", value="lahis_ctrl.integrations.vllm.plugin:register")
    monkeypatch.setattr(md, "entry_points", lambda group=None: [ours])
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    assert plugin.plugin_available() is None
    monkeypatch.setenv("VLLM_PLUGINS", "other")
    assert "leaves out the lahis_ctrl plugin" in plugin.plugin_available()
    monkeypatch.setenv("VLLM_PLUGINS", "other,lahis_ctrl")
    assert plugin.plugin_available() is None
    monkeypatch.setattr(md, "entry_points", lambda group=None: [])
    assert "not registered" in plugin.plugin_available()


@pytest.mark.vllm
def test_register_is_idempotent():
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
    from vllm.v1.worker.worker_base import WorkerBase

    plugin.register()
    first = DefaultModelLoader.__dict__["get_all_weights"], EngineArgs.__dict__["create_engine_config"]
    plugin.register()
    assert (DefaultModelLoader.__dict__["get_all_weights"], EngineArgs.__dict__["create_engine_config"]) == first
    assert getattr(first[0], "__lahis_ctrl_wrapped__") and not hasattr(first[0].__wrapped__, "__lahis_ctrl_wrapped__")
    assert WorkerBase.lahis_set_head_mask is plugin.lahis_set_head_mask
