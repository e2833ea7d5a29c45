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


# --------------------------------------------------------------------------- per-request masks, without vLLM
def _registry_files(tmp_path, model):
    a = HeadMask.from_heads(model, [(0, 1), (2, 3)], 0.0)
    b = HeadMask.from_heads(model, [(1, 0)], 0.0)
    b.values[2, 2] = 2.0
    return {"a": str(a.save(tmp_path / "a.safetensors")), "b": str(b.save(tmp_path / "b.json"))}, a, b


def test_registry_config_refusals(tmp_path):
    from lahis_ctrl.integrations.vllm.requests import registry_config

    assert registry_config({}) == ({}, None) and registry_config(None) == ({}, None)
    assert registry_config({"lahis_masks": {"de": "x"}, "lahis_default_mask": "de"}) == ({"de": "x"}, "de")
    assert registry_config({"lahis_masks": {"de": "x"}, "lahis_default_mask": "none"}) == ({"de": "x"}, None)
    for bad, message in [({"lahis_masks": ["x"]}, "must map names"), ({"lahis_masks": {}}, "must map names"),
                         ({"lahis_masks": {"none": "x"}}, "not 'none'"), ({"lahis_masks": {"a b": "x"}}, "letters"),
                         ({"lahis_masks": {"de": ""}}, "must be a mask file"),
                         ({"lahis_masks": {"de": "x"}, "lahis_default_mask": "hi"}, "not among the registered"),
                         ({"lahis_default_mask": "hi"}, "no masks are registered")]:
        with pytest.raises(LahisError, match=message):
            registry_config(bad)


def test_front_end_resolves_and_checks_every_registered_mask(tmp_path, monkeypatch):
    from lahis_ctrl.integrations.vllm.requests import check_registry

    model = tiny_model("llama")
    paths, _, _ = _registry_files(tmp_path, model)
    monkeypatch.chdir(tmp_path)
    additional = {"lahis_masks": {"a": "a.safetensors", "b": "b.json"}}
    check_registry(additional, model.config, "tiny")
    assert additional["lahis_masks"] == {"a": str((tmp_path / "a.safetensors").resolve()),
                                         "b": str((tmp_path / "b.json").resolve())}  # what every worker reads
    other = HeadMask.from_heads(tiny_model("gemma3"), [(0, 0)], 0.0).save(tmp_path / "g.safetensors")
    with pytest.raises(MaskMismatchError, match=r"\['g'\] .* shape mismatch"):
        check_registry({"lahis_masks": {"a": paths["a"], "g": str(other)}}, model.config, "tiny")
    with pytest.raises(LahisError, match="per-request mask 'x' .* file not found"):
        check_registry({"lahis_masks": {"x": str(tmp_path / "nope.safetensors")}}, model.config, "tiny")
    with pytest.raises(LahisError, match="both configured"):
        check_registry({"lahis_masks": {"a": paths["a"]}, CONFIG_KEY: paths["b"]}, model.config, "tiny")
    with pytest.raises(LahisError, match="cannot be served with LoRA enabled"):
        check_registry({"lahis_masks": {"a": paths["a"]}}, model.config, "tiny", lora_config=object())


class _Projection(torch.nn.Linear):
    """What vLLM's RowParallelLinear looks like to the plugin: the input columns of one rank."""

    def __init__(self, width, hidden, rank, tp):
        super().__init__(width // tp, hidden, bias=False)
        self.input_size_per_partition, self.tp_rank, self.tp_size = width // tp, rank, tp


def _vllm_like(model, rank, tp):
    """A module tree named like vLLM's Llama (model.layers.N.self_attn.o_proj) holding one rank's projections."""
    spec = describe(model)
    width = spec.num_heads * spec.head_dim
    root = torch.nn.Module()
    root.model = torch.nn.Module()
    root.model.layers = torch.nn.ModuleList()
    for layer in range(spec.num_layers):
        block = torch.nn.Module()
        block.self_attn = torch.nn.Module()
        block.self_attn.o_proj = _Projection(width, model.config.hidden_size, rank, tp)
        root.model.layers.append(block)
    return root


def _vllm_config(model, additional, dtype=torch.float32):
    return SimpleNamespace(model_config=SimpleNamespace(hf_config=model.config, model="tiny", dtype=dtype),
                           additional_config=additional,
                           scheduler_config=SimpleNamespace(max_num_batched_tokens=32, max_num_seqs=4))


@pytest.mark.parametrize("tp", [1, 2])
def test_gain_tables_hold_each_ranks_columns_and_scale_each_token_by_its_row(tmp_path, monkeypatch, tp):
    from lahis_ctrl.core.head_layout import feature_scales
    from lahis_ctrl.integrations.vllm import requests

    monkeypatch.setattr(requests, "_GAINS", requests._Gains())
    model = tiny_model("llama")  # 3 layers x 4 heads x 16: o_proj input width 64
    paths, a, b = _registry_files(tmp_path, model)
    config = _vllm_config(model, {"lahis_masks": paths})
    for rank in range(tp):
        fake = _vllm_like(model, rank, tp)
        requests.install_gains(fake, config)
        cols = slice(rank * 64 // tp, (rank + 1) * 64 // tp)
        for layer in range(3):
            proj = fake.model.layers[layer].self_attn.o_proj
            assert proj.lahis_gains.shape == (3, 64 // tp)  # [masks + 1, local heads x head_dim]
            assert torch.equal(proj.lahis_gains[0], torch.ones(64 // tp))
            assert torch.equal(proj.lahis_gains[1], feature_scales(a.values[layer], 16)[cols])
            assert torch.equal(proj.lahis_gains[2], feature_scales(b.values[layer], 16)[cols])
        assert requests._GAINS.columns == (cols.start, cols.stop)
    # the per-token rows are written into the ONE shared buffer in place; each token is scaled by its row
    rows = requests._GAINS.rows
    address = rows.data_ptr()
    requests._fill([2, 0, 1], [3, 1, 2])  # three requests: 3 tokens of b, 1 without a mask, 2 of a
    assert rows.data_ptr() == address and rows[:6].tolist() == [2, 2, 2, 0, 1, 1]
    proj = fake.model.layers[2].self_attn.o_proj
    x = torch.randn(6, 64 // tp)
    with torch.no_grad():
        got = proj(x)
        scaled = torch.stack([x[t] * proj.lahis_gains[r] for t, r in enumerate([2, 2, 2, 0, 1, 1])])
        want = torch.nn.functional.linear(scaled, proj.weight)
    assert torch.equal(got, want)


def test_model_runner_wrappers_fill_rows_in_token_order(tmp_path, monkeypatch):
    """The V1 runner (CPU; older GPU setups) and the V2 runner (the GPU default) lay tokens out per request in
    their own batch order; each wrapper writes that order's rows."""
    import numpy as np

    from lahis_ctrl.integrations.vllm import requests

    monkeypatch.setattr(requests, "_GAINS", requests._Gains())
    model = tiny_model("llama")
    paths, _, _ = _registry_files(tmp_path, model)
    requests.install_gains(_vllm_like(model, 0, 1), _vllm_config(model, {"lahis_masks": paths}))
    state = lambda name: SimpleNamespace(sampling_params=SimpleNamespace(  # noqa: E731
        extra_args=None if name is None else {"lahis_mask": name}))
    # V1: input_batch order r2, r0, r1; num_scheduled_tokens in that order
    v1 = SimpleNamespace(input_batch=SimpleNamespace(num_reqs=3, req_ids=["r2", "r0", "r1", None]),
                         requests={"r0": state("a"), "r1": state("none"), "r2": state("b")})
    prepare = requests._wrap_v1_prepare_inputs(lambda self, so, n: "metadata")
    assert prepare(v1, None, np.array([2, 1, 3])) == "metadata"
    assert requests._GAINS.rows[:6].tolist() == [2, 2, 1, 0, 0, 0]
    # V2: persistent request slots; the batch maps positions to slots and gives query start offsets
    new = [SimpleNamespace(req_id=r, sampling_params=state(n).sampling_params)
           for r, n in (("x", "b"), ("y", None), ("z", "a"))]
    v2 = SimpleNamespace(req_states=SimpleNamespace(req_id_to_index={"x": 5, "y": 0, "z": 2}), max_num_reqs=8)
    requests._wrap_v2_add_requests(lambda self, so: None)(v2, SimpleNamespace(scheduled_new_reqs=new))
    batch = SimpleNamespace(num_reqs=3, idx_mapping_np=np.array([2, 5, 0]), query_start_loc_np=np.array([0, 1, 4, 6, 6]))
    assert requests._wrap_v2_prepare_inputs(lambda self: batch)(v2) is batch
    assert requests._GAINS.rows[:6].tolist() == [1, 2, 2, 2, 0, 0]


def test_load_time_mask_by_hub_reference(tmp_path, monkeypatch):
    """`lahis_mask` / $LAHIS_MASK take any mask reference; the two sources must resolve to the same file."""
    from hub_support import cache_repo, offline_hub

    model = tiny_model("llama")
    mask = _mask(model)
    local = mask.save(tmp_path / "m.safetensors")
    offline_hub(monkeypatch, tmp_path / "hf")
    cache_repo(tmp_path / "hf", "lahis-test/m", {"lahis_mask.safetensors": local.read_bytes()})
    loaded = plugin.load_checked_mask("lahis-test/m", "$LAHIS_MASK", model.config, "tiny")
    assert torch.equal(loaded.values, mask.values)
    from lahis_ctrl.core.hub import resolve_mask_file

    resolved = str(resolve_mask_file("lahis-test/m"))
    monkeypatch.setenv(MASK_ENV, resolved)
    assert plugin.configured_mask_path({CONFIG_KEY: "lahis-test/m"})[0] == "lahis-test/m"  # the same file: fine
    monkeypatch.setenv(MASK_ENV, str(local))  # same bytes, another file: two masks configured
    with pytest.raises(LahisError, match="two different head masks"):
        plugin.configured_mask_path({CONFIG_KEY: "lahis-test/m"})
    # the front end hands the workers the file it resolved (no worker fetches anything)
    monkeypatch.delenv(MASK_ENV)
    config = SimpleNamespace(additional_config={CONFIG_KEY: "lahis-test/m"},
                             model_config=SimpleNamespace(hf_config=model.config, model="tiny"))
    plugin._wrap_create_engine_config(lambda self, *a, **k: config)(None)
    assert config.additional_config[CONFIG_KEY] == str(resolve_mask_file("lahis-test/m").resolve())
