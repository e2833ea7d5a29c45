"""The `vllm.general_plugins` entry point: fold a head mask into the o_proj weights while vLLM loads them.

vLLM calls `register()` in every process it starts (API server / LLM front end, engine core, each
worker). It wraps a few vLLM functions, once per process (calling it again is a no-op):

* `EngineArgs.create_engine_config` (front end): when a mask is configured, load it and check it fits
  the model's config BEFORE any engine process starts, so a bad or mismatched mask fails fast with a
  one-line reason. The path is made absolute so the worker processes find the same file.
* every model loader's `load_model` (workers): resolve the mask for the target model, fold it while
  the weights stream in, then check every masked layer was actually folded. A load path that cannot
  fold (a loader without a checkpoint stream, a quantized o_proj) stops the engine with the reason:
  a masked engine never serves unmasked weights silently.
* `DefaultModelLoader.get_all_weights` (workers): the checkpoint stream. Each layer's o_proj weight
  ([hidden, num_heads * head_dim] in the checkpoint, the full tensor on every rank) has head h's
  columns h*head_dim:(h+1)*head_dim multiplied by mask[layer, h] before vLLM shards, repacks or
  compiles anything. Tensor parallelism therefore needs nothing special: the RowParallelLinear weight
  loader of rank r keeps the columns of the heads that rank holds, already scaled. CPU repacking, CUDA
  graphs and torch.compile only ever see the scaled weights, and inference costs nothing extra.
* `WorkerBase` gains `lahis_set_head_mask` / `lahis_mask_status` / `lahis_request_masks`, which
  `set_head_mask(llm, mask)` and friends call through `collective_rpc` by name (no pickled callables, so
  VLLM_ALLOW_INSECURE_SERIALIZATION stays off).
* Per-request masks (`additional_config={"lahis_masks": {name: REF}}`; see requests.py): the front end checks
  them with the other masks, `InputProcessor.process_inputs` checks each request's name and salts its prefix
  cache, the workers install gain tables after loading, and the V1/V2 model runners fill the per-token rows.

With no mask configured every wrapper returns after a dictionary lookup and an environment read, and
register() itself takes milliseconds: the loader and worker patches wait until vLLM imports those modules.
Where the mask comes from: `additional_config={"lahis_mask": REF}` (vLLM's own config; CLI
`--additional-config '{"lahis_mask": "REF"}'`) or the environment variable LAHIS_MASK=REF, where REF is a mask
file, a folder or a Hub repo id (core.hub). If both are set they must name the same file. The front end resolves
the reference once and passes the workers the local file it resolved to.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import ARCH_ENV, CONFIG_KEY, MASK_ENV

# a child of vLLM's logger, so the messages appear in vLLM's own log output (every process)
log = logging.getLogger("vllm.lahis_ctrl")

_WRAPPED = "__lahis_ctrl_wrapped__"


@dataclass
class _State:
    """What this process folds into the weights it loads (one model per vLLM worker process)."""

    mask: object = None  # HeadMask or None; None = load the checkpoint unchanged
    source: str = ""  # where the mask came from, for messages
    model_config: object = None  # the target model's ModelConfig: draft models are never masked
    spec: object = None  # ModelSpec built from the config (layers x heads, head_dim)
    pattern: re.Pattern | None = None  # checkpoint names of the o_proj weights; group 1 = layer index
    layout: str = "linear"
    applied: dict = field(default_factory=dict)  # layer -> checkpoint name folded in the current pass
    loading: int = 0  # nesting depth of load_model (a loader's load_model may call its parent's)


_STATE = _State()


# --------------------------------------------------------------------------- where the mask comes from
def configured_mask_path(additional_config=None) -> tuple[str | None, str]:
    """(reference, description) of the mask configured for this engine, or (None, '') when there is none. A
    reference is a file, a folder or a Hub repo id (core.hub); two given must name the same file."""
    from ...core.errors import LahisError

    from_config = None
    if isinstance(additional_config, dict):
        from_config = additional_config.get(CONFIG_KEY)
    from_env = os.environ.get(MASK_ENV) or None
    if from_config and from_env and from_config != from_env and _same_file(from_config, from_env) is False:
        raise LahisError(
            f"two different head masks are configured: additional_config['{CONFIG_KEY}']={from_config} and "
            f"{MASK_ENV}={from_env}. Give one (unset {MASK_ENV} or drop the additional_config key)."
        )
    if from_config:
        return str(from_config), f"additional_config['{CONFIG_KEY}']"
    if from_env:
        return from_env, f"${MASK_ENV}"
    return None, ""


def _same_file(a: str, b: str):
    """Whether two mask references name the same file (None when one cannot be resolved: the load will say why)."""
    from ...core.errors import LahisError
    from ...core.hub import resolve_mask_file

    try:
        return resolve_mask_file(a).resolve() == resolve_mask_file(b).resolve()
    except LahisError:
        return None


def config_spec(hf_config, name: str = ""):
    """A ModelSpec from a transformers config alone (no weights): what a mask file is checked against."""
    from ...core.architecture import spec_from_config

    return spec_from_config(hf_config, name, os.environ.get(ARCH_ENV) or None)


ALLOW_EXTREME_KEY = "lahis_allow_extreme_scales"  # additional_config keys: serve what the checks would refuse
ALLOW_REFOLD_KEY = "lahis_allow_refold"


def _allowed(additional_config, key: str) -> bool:
    value = additional_config.get(key) if isinstance(additional_config, dict) else None
    return str(value).strip().lower() in ("1", "true", "yes") if value is not None else False


def load_checked_mask(path: str, source: str, hf_config, name: str = "", additional_config=None):
    """Load a mask file and check it belongs to this model; None for an all-ones mask (nothing to fold).

    `path` is any mask reference (a file, a folder, a Hub repo id: core.hub). Refused, each with the reason: a
    mask of another model; negative or absurd scales (unless additional_config[ALLOW_EXTREME_KEY]); a checkpoint
    that already has a mask folded in (unless additional_config[ALLOW_REFOLD_KEY]); a .safetensors mask inside the
    model's folder, which vLLM would read as a weight file."""
    from ...core.errors import LahisError
    from ...core.export import check_not_folded
    from ...core.hub import resolve_mask_file
    from ...core.mask import HeadMask

    try:
        p = resolve_mask_file(path)
        if name and p.suffix == ".safetensors" and Path(name).is_dir() \
                and Path(name).resolve() in p.resolve().parents:
            raise LahisError(f"the mask lies inside the model folder {name}, where vLLM loads every *.safetensors "
                             "file as weights: move it out of the folder (or save it as .json)")
        mask = HeadMask.load(p)
        mask.check_sane(_allowed(additional_config, ALLOW_EXTREME_KEY))
        mask.validate(config_spec(hf_config, name))
        check_not_folded(hf_config, _allowed(additional_config, ALLOW_REFOLD_KEY), name or "this model")
    except LahisError as exc:
        raise type(exc)(f"head mask from {source} ({path}) cannot be served with {name or 'this model'}: {exc}") from exc
    return None if mask.is_identity else mask


def _under_vllm_cli() -> bool:
    """True inside vLLM's own command line (`vllm serve`, `python -m vllm.entrypoints...`), not a library call."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return Path(sys.argv[0] if sys.argv else "").name == "vllm" or \
        str(getattr(main_spec, "name", "")).startswith("vllm.entrypoints")


_LOCATORS: dict[str, tuple[str, str]] = {}


def _o_proj_locator(hf_config) -> tuple[str, str]:
    """(suffix, layout) of the output projection, found by lahis_ctrl.core.architecture on a weightless copy of
    the transformers model (the model masks are made on); suffix is the module path after the layer index."""
    key = hf_config.to_json_string(use_diff=False) + (os.environ.get(ARCH_ENV) or "")
    if key in _LOCATORS:
        return _LOCATORS[key]
    from ...core.errors import LahisError
    from ...core.export import meta_spec

    try:
        spec = meta_spec(hf_config, arch=os.environ.get(ARCH_ENV) or None)  # module structure only, on meta
    except LahisError as exc:
        raise LahisError(
            f"{exc}: cannot locate its attention output projections. Set {ARCH_ENV} to an ArchSpec JSON, e.g. "
            f"'{{\"o_proj\": \"model.layers.{{layer}}.self_attn.o_proj\"}}'."
        ) from exc
    first = spec.o_proj_names[0]
    m = re.match(r"^(.*?)0\.(.+)$", first)
    if m is None:
        raise LahisError(f"cannot read the layer index out of the output-projection name '{first}'")
    _LOCATORS[key] = (m.group(2), spec.layout)
    return _LOCATORS[key]


def _prepare(mask, source: str, model_config) -> None:
    """Make `mask` the one this process folds into the target model's weights from now on."""
    hf_config = model_config.hf_config
    spec = config_spec(hf_config, str(model_config.model))
    pattern, layout = None, "linear"
    if mask is not None:
        mask.validate(spec)
        suffix, layout = _o_proj_locator(hf_config)
        pattern = o_proj_weight_pattern(suffix)
    _STATE.mask, _STATE.source, _STATE.model_config = mask, source, model_config
    _STATE.spec, _STATE.pattern, _STATE.layout = spec, pattern, layout
    _STATE.applied = {}


def _expected_layers(mask) -> set[int]:
    return {int(layer) for layer in (mask.values != 1).any(dim=1).nonzero().flatten().tolist()}


def check_folded() -> None:
    """Raise unless every layer with a changed head was folded in the last load pass of this process."""
    from ...core.errors import LahisError

    mask = _STATE.mask
    if mask is None:
        return
    missing = sorted(_expected_layers(mask) - set(_STATE.applied))
    if missing:
        raise LahisError(
            f"the head mask from {_STATE.source} was NOT applied to layers {missing}: their output-projection "
            "weights never came through vLLM's checkpoint stream as plain float tensors (load formats other than "
            "auto/safetensors/pt, or a quantized checkpoint). Refusing to serve an unmasked model; export the "
            "mask with `lahis export --format folded` and serve that checkpoint instead."
        )


# --------------------------------------------------------------------------- folding while weights stream in
def o_proj_weight_pattern(suffix: str) -> re.Pattern:
    """Checkpoint names of the o_proj weights; group 1 = the layer index.

    Checkpoint names may carry another prefix than the transformers modules (a multimodal wrapper, vLLM's
    prefixes), but always end in '<layer>.<suffix>.weight'."""
    return re.compile(r"(?:^|\.)(\d+)\." + re.escape(suffix) + r"\.weight$")


def fold_weight_stream(weights, mask, spec, pattern: re.Pattern, layout: str, applied: dict | None = None):
    """Pass a checkpoint's (name, tensor) stream through, folding `mask` into each layer's o_proj weight.

    A plain generator (no vLLM needed): vLLM's loader consumes it, and the tests compare it with hooks and
    folds. Each o_proj weight ([hidden, num_heads * head_dim] for Linear) gets head h's columns multiplied by
    mask[layer, h] (core.head_layout.folded_weight); untouched layers stay bit-identical. `applied` collects
    layer -> checkpoint name, so the caller can check every masked layer came through.
    """
    from ...core import head_layout
    from ...core.errors import LahisError

    applied = {} if applied is None else applied
    width = spec.num_heads * spec.head_dim
    for name, tensor in weights:
        m = pattern.search(name)
        if m is None or int(m.group(1)) >= spec.num_layers:  # indices past the decoder (MTP heads) stay
            yield name, tensor
            continue
        layer = int(m.group(1))
        if layer in applied and applied[layer] != name:
            raise LahisError(
                f"two checkpoint tensors look like layer {layer}'s output projection ('{applied[layer]}' and "
                f"'{name}'); set {ARCH_ENV} to say which module the mask applies to"
            )
        applied[layer] = name
        row = mask.values[layer]
        if bool((row == 1).all()):
            yield name, tensor
            continue
        if (not tensor.dtype.is_floating_point or tensor.dim() != 2
                or tensor.shape[head_layout.in_dim(layout)] != width):
            raise LahisError(
                f"cannot fold the head mask into '{name}': expected a float [*, {width}] weight "
                f"({spec.num_heads} heads x head_dim {spec.head_dim}), got {tensor.dtype} {tuple(tensor.shape)} "
                "(quantized or packed checkpoint). Export a folded checkpoint with `lahis export` instead."
            )
        yield name, head_layout.folded_weight(tensor, row, spec.head_dim, layout)


def _masked_stream(weights):
    return fold_weight_stream(weights, _STATE.mask, _STATE.spec, _STATE.pattern, _STATE.layout, _STATE.applied)


def _is_target(model_config) -> bool:
    return _STATE.mask is not None and model_config is _STATE.model_config


# --------------------------------------------------------------------------- the wrappers
def _wrap_get_all_weights(original):
    @functools.wraps(original)
    def get_all_weights(self, model_config, model):
        weights = original(self, model_config, model)
        if not _is_target(model_config):
            return weights
        _STATE.applied = {}  # a new pass (first load, or a reload for a live mask)
        return _masked_stream(weights)

    setattr(get_all_weights, _WRAPPED, True)
    return get_all_weights


def _wrap_load_model(original):
    @functools.wraps(original)
    def load_model(self, vllm_config, model_config, *args, **kwargs):
        if _STATE.loading or model_config is not getattr(vllm_config, "model_config", None):
            return original(self, vllm_config, model_config, *args, **kwargs)  # nested call or a draft model
        path, source = configured_mask_path(getattr(vllm_config, "additional_config", None))
        additional = getattr(vllm_config, "additional_config", None)
        mask = load_checked_mask(path, source, model_config.hf_config, str(model_config.model), additional) \
            if path else None
        _prepare(mask, source, model_config)
        if mask is not None:
            log.info("lahis_ctrl: folding the head mask from %s (%s, %d heads changed) into the output projections",
                     source, path, len(mask.changed_heads()))
        _STATE.loading += 1
        try:
            model = original(self, vllm_config, model_config, *args, **kwargs)
        finally:
            _STATE.loading -= 1
        check_folded()
        from .requests import install_gains

        install_gains(model, vllm_config)  # per-request masks, when registered: before any compile or capture
        return model

    setattr(load_model, _WRAPPED, True)
    return load_model


def _wrap_create_engine_config(original):
    @functools.wraps(original)
    def create_engine_config(self, *args, **kwargs):
        config = original(self, *args, **kwargs)
        additional = getattr(config, "additional_config", None)
        from ...core.errors import LahisError

        try:
            path, source = configured_mask_path(additional)
            mc = config.model_config
            if path:
                from ...core.hub import resolve_mask_file

                load_checked_mask(path, source, mc.hf_config, str(mc.model), additional)  # raises with the reason
                # workers read the file the front end resolved (a Hub reference is fetched once, here)
                resolved = str(resolve_mask_file(path).resolve())
                if isinstance(additional, dict) and additional.get(CONFIG_KEY):
                    additional[CONFIG_KEY] = resolved
                if os.environ.get(MASK_ENV):
                    os.environ[MASK_ENV] = resolved  # inherited by the engine and worker processes started next
            from .requests import check_registry

            check_registry(additional, mc.hf_config, str(mc.model),  # per-request masks: resolved and checked
                           getattr(config, "lora_config", None))
        except LahisError as exc:
            if _under_vllm_cli():  # one line, before any engine process starts, instead of a traceback
                print(f"lahis_ctrl: error: {' '.join(str(exc).split())}", file=sys.stderr)
                raise SystemExit(2) from None
            raise
        return config

    setattr(create_engine_config, _WRAPPED, True)
    return create_engine_config


def _patch(owner, attr: str, wrapper) -> None:
    current = owner.__dict__.get(attr)
    if current is None or getattr(current, _WRAPPED, False):
        return
    setattr(owner, attr, wrapper(current))


# --------------------------------------------------------------------------- worker methods (collective_rpc)
def lahis_set_head_mask(worker, payload):
    """Worker side of `set_head_mask`: fold `payload` (a mask dict, or None) by re-streaming the weights."""
    from ...core.mask import HeadMask

    model_config = worker.vllm_config.model_config
    mask = None if payload is None else _mask_from_payload(payload)
    if mask is not None and mask.is_identity:
        mask = None  # all ones: the checkpoint's weights, bit for bit
    _prepare(mask, "set_head_mask", model_config)
    # Re-stream the checkpoint through the same fold as at load time; vLLM re-runs its weight processing
    # (CPU repacking, ...) afterwards, so the result equals a freshly loaded engine with this mask.
    worker.reload_weights()
    check_folded()
    return lahis_mask_status(worker)


def lahis_request_masks(worker):
    """Worker side of `request_masks(llm)`: the per-request masks this worker serves and its input columns."""
    from .requests import status

    return status(worker)


def lahis_mask_status(worker):
    """What this worker folded: {'rank', 'source', 'changed_heads', 'folded_layers'}."""
    mask = _STATE.mask
    rank = getattr(worker, "rank", None)
    return {
        "rank": rank,
        "source": _STATE.source if mask is not None else None,
        "changed_heads": mask.changed_heads() if mask is not None else [],
        "values": mask.values.tolist() if mask is not None else None,
        "folded_layers": sorted(_STATE.applied),
    }


def mask_payload(mask) -> dict:
    """A HeadMask as plain lists/strings, which vLLM's msgpack RPC carries without pickling."""
    return {"values": mask.values.tolist(), **{k: v for k, v in mask.facts().items() if k not in ("num_layers", "num_heads")}}


def _mask_from_payload(payload: dict):
    import torch

    from ...core.mask import HeadMask

    facts = {k: v for k, v in payload.items() if k != "values"}
    return HeadMask(torch.tensor(payload["values"], dtype=torch.float32), **facts)


# --------------------------------------------------------------------------- entry point
ENTRY_POINT = "lahis_ctrl"


def plugin_available() -> str | None:
    """None when vLLM processes started from here will load this plugin, else the reason they will not."""
    from importlib.metadata import entry_points

    names = [ep.name for ep in entry_points(group="vllm.general_plugins") if ep.value.startswith(__name__)]
    if not names:
        return ("the lahis_ctrl vLLM plugin is not registered in this environment (no 'vllm.general_plugins' entry "
                "point): reinstall lahis-ctrl here, e.g. pip install -e .")
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and not set(names) & {p.strip() for p in allowed.split(",")}:
        return f"VLLM_PLUGINS={allowed!r} leaves out the lahis_ctrl plugin: add '{ENTRY_POINT}' to it"
    return None


class _AfterImport:
    """A sys.meta_path finder that runs a patch right after a module's first import.

    vLLM's model-loader package costs ~2 s to import, and processes that never load a model (the API
    server's front end) never import it; patching it eagerly would make the plugin expensive there.
    """

    def __init__(self):
        self.pending: dict[str, list] = {}

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:  # the finder that would have found it without us
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def run(module):
            exec_module(module)
            for patch in self.pending.pop(fullname, []):
                patch(module)

        loader.exec_module = run  # a fresh loader object per spec: nothing else is affected
        return spec


def _after_import(name: str, patch) -> None:
    module = sys.modules.get(name)
    if module is not None:
        patch(module)
        return
    finder = next((f for f in sys.meta_path if isinstance(f, _AfterImport)), None)
    if finder is None:
        finder = _AfterImport()
        sys.meta_path.insert(0, finder)
    finder.pending.setdefault(name, []).append(patch)


def _patch_loaders(package) -> None:
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    _patch(DefaultModelLoader, "get_all_weights", _wrap_get_all_weights)
    # Every loader that overrides load_model gets the same guard (tensorizer, modelexpress, ...).
    for cls in {BaseModelLoader, *getattr(package, "_LOAD_FORMAT_TO_MODEL_LOADER", {}).values()}:
        _patch(cls, "load_model", _wrap_load_model)


def _patch_worker(module) -> None:
    worker_base = module.WorkerBase
    if "lahis_set_head_mask" not in worker_base.__dict__:
        worker_base.lahis_set_head_mask = lahis_set_head_mask
        worker_base.lahis_mask_status = lahis_mask_status
        worker_base.lahis_request_masks = lahis_request_masks


def _patch_input_processor(module) -> None:
    from .requests import _wrap_process_inputs

    _patch(module.InputProcessor, "process_inputs", _wrap_process_inputs)


def _patch_v1_runner(module) -> None:
    from .requests import _wrap_v1_prepare_inputs

    _patch(module.GPUModelRunner, "_prepare_inputs", _wrap_v1_prepare_inputs)


def _patch_v2_runner(module) -> None:
    from .requests import _wrap_v2_add_requests, _wrap_v2_prepare_inputs

    _patch(module.GPUModelRunner, "add_requests", _wrap_v2_add_requests)
    _patch(module.GPUModelRunner, "prepare_inputs", _wrap_v2_prepare_inputs)


def register() -> None:
    """Entry point of the `vllm.general_plugins` group; vLLM calls it in each of its processes.

    Re-entrant and cheap: each wrapper is installed once per process, the loader and worker patches only
    when vLLM imports those modules (at once if they are already imported).
    """
    from vllm.engine.arg_utils import EngineArgs  # already imported: vLLM loads plugins from there

    _patch(EngineArgs, "create_engine_config", _wrap_create_engine_config)
    _after_import("vllm.model_executor.model_loader", _patch_loaders)
    _after_import("vllm.v1.worker.worker_base", _patch_worker)
    # per-request masks: the front end's request check and cache salt, each model runner's per-step row fill
    _after_import("vllm.v1.engine.input_processor", _patch_input_processor)
    _after_import("vllm.v1.worker.gpu_model_runner", _patch_v1_runner)
    _after_import("vllm.v1.worker.gpu.model_runner", _patch_v2_runner)
