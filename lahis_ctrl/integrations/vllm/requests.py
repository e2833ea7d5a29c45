"""Per-request head masks in vLLM: masks registered by name when the engine starts, chosen by each request.

    LLM(model, additional_config={"lahis_masks": {"de": "org/de-mask", "hi": "hi.safetensors"}})
    llm.generate(prompts, SamplingParams(extra_args={"lahis_mask": "de"}))
    # OpenAI server: --additional-config '{"lahis_masks": {...}}', a request body with {"vllm_xargs": {"lahis_mask": "de"}}

A request without a name gets no mask, or the one named by `additional_config["lahis_default_mask"]`; the name
"none" asks for no mask explicitly. A request only ever picks among the names registered at start: a name is
looked up in that table and nothing else, so a request can never make the server read a path or fetch a repo.

How it runs (the design keeps torch.compile and CUDA graphs):
  * Front end (`EngineArgs.create_engine_config`): every reference is resolved once (a file, a folder or a Hub repo,
    through huggingface_hub), checked against the model (shape, type, sane scales, not already folded) and replaced
    by the local file it resolved to, so every worker reads the same bytes without fetching anything.
  * Front end, per request (`InputProcessor.process_inputs`): an unknown name is refused with VLLMValidationError,
    which the OpenAI server answers with HTTP 400 while the engine keeps serving; a known name is written back in
    canonical form (the default applied) and the request's `cache_salt` gets the mask's digest, so requests with
    different masks never share prefix-cache blocks (vLLM hashes the salt into the first block, and every later
    block hash chains from it). Requests without a mask keep their salt: the all-ones row is the plain model.
  * Worker, once after the weights load: each layer's attention output projection gets two buffers and a forward
    pre-hook. `lahis_gains` [masks + 1, local_heads * head_dim] holds row 0 = ones and each mask repeated over its
    heads' features, only the columns of the heads this tensor-parallel rank holds (RowParallelLinear keeps input
    columns rank*w:(rank+1)*w); `lahis_rows` [max tokens] is ONE int64 buffer shared by every layer. The hook is
    `x * lahis_gains[lahis_rows[:x.shape[0]]]`: a gather and a multiply with no Python per request.
  * Model runner, once per step before the forward: the per-token rows (each request's row repeated over its
    scheduled tokens, in the runner's own token order) are written INTO `lahis_rows` in place (a pinned host copy,
    non-blocking). The buffer's address never changes, so a CUDA graph captured once reads each step's rows when it
    replays, and torch.compile sees module buffers (graph inputs), not Python values it would specialise on.
    The V1 runner (CPU and older GPU setups) and the V2 runner (the GPU default in vLLM 0.32) are both wrapped. The
    host side costs V1 one cached attribute read per scheduled request per step (the row is looked up once per
    request and kept on its CachedRequestState), V2 one vectorised gather from a per-slot array.

What a GPU run must check (bench_vllm.py --per-request does): greedy tokens of a mixed batch equal each request
served alone with its mask folded at load, with CUDA graphs on (piecewise and full) and with both model runners;
and throughput per-request-masked / unmasked >= 0.99 (the cost is one gather and one multiply per layer and token).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Optional

log = logging.getLogger("vllm.lahis_ctrl")

MASKS_KEY = "lahis_masks"  # additional_config: {name: mask reference}
DEFAULT_KEY = "lahis_default_mask"  # additional_config: the name requests without one get
REQUEST_KEY = "lahis_mask"  # SamplingParams.extra_args / vllm_xargs: the name a request picks
NONE = "none"  # the name of "no mask" (row 0)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# --------------------------------------------------------------------------- the registry (front end and workers)
def registry_config(additional_config) -> tuple[dict[str, str], Optional[str]]:
    """({name: reference}, default name or None) from vLLM's additional_config; structure errors are LahisError."""
    from ...core.errors import LahisError

    if not isinstance(additional_config, dict):
        return {}, None
    masks = additional_config.get(MASKS_KEY)
    default = additional_config.get(DEFAULT_KEY)
    if masks is None:
        if default not in (None, NONE):
            raise LahisError(f"additional_config['{DEFAULT_KEY}']={default!r} names a mask, but no masks are "
                             f"registered: add additional_config['{MASKS_KEY}'] = {{\"{default}\": \"MASK\"}}")
        return {}, None
    if not isinstance(masks, dict) or not masks:
        raise LahisError(f"additional_config['{MASKS_KEY}'] must map names to mask references, e.g. "
                         "{\"de\": \"org/de-mask\", \"hi\": \"hi.safetensors\"}; got " + repr(masks)[:80])
    for name, ref in masks.items():
        if not isinstance(name, str) or not _NAME.match(name) or name.lower() == NONE:
            raise LahisError(f"mask name {name!r} in additional_config['{MASKS_KEY}']: use letters, digits, '-', '_' "
                             f"or '.' (at most 64), and not '{NONE}', which means no mask")
        if not isinstance(ref, str) or not ref.strip():
            raise LahisError(f"additional_config['{MASKS_KEY}']['{name}'] must be a mask file, folder or Hub repo id")
    if default is not None and default != NONE and default not in masks:
        raise LahisError(f"additional_config['{DEFAULT_KEY}']={default!r} is not among the registered masks "
                         f"({', '.join(masks)})")
    return dict(masks), (None if default in (None, NONE) else default)


def mask_digest(mask) -> str:
    """What tells two masks apart in the prefix cache: a hash of the values (and shape) of the mask."""
    h = hashlib.sha256(repr(tuple(mask.values.shape)).encode())
    h.update(mask.values.numpy().tobytes())
    return h.hexdigest()[:16]


def check_registry(additional_config, hf_config, model_name: str, lora_config=None) -> None:
    """Front end, before any engine process starts: resolve, load and check every registered mask; replace each
    reference in additional_config by the local file it resolved to. Raises LahisError naming the mask.
    LoRA serving is refused alongside: vLLM's LoRA layers call the wrapped projection's kernel directly, past the
    hook that applies the gains, so masks would silently not apply."""
    from ...core.errors import LahisError
    from ...core.hub import resolve_mask_file
    from . import CONFIG_KEY, MASK_ENV
    from .plugin import configured_mask_path, load_checked_mask

    masks, _ = registry_config(additional_config)
    if not masks:
        return
    if lora_config is not None:
        raise LahisError(f"per-request masks (additional_config['{MASKS_KEY}']) cannot be served with LoRA enabled: "
                         "vLLM's LoRA layers bypass the output projections' gains. Drop --enable-lora, or serve the "
                         "masks as LoRA adapters (lahis export --format lora)")
    folded, source = configured_mask_path(additional_config)
    if folded:
        raise LahisError(f"a load-time mask ({source}) and per-request masks (additional_config['{MASKS_KEY}']) are "
                         "both configured: per-request masks apply to the checkpoint's weights, so the two would "
                         f"multiply. Drop {CONFIG_KEY}/{MASK_ENV} and name a default instead: "
                         f"additional_config['{DEFAULT_KEY}']")
    for name, ref in masks.items():
        try:
            path = resolve_mask_file(ref)
        except LahisError as exc:
            raise type(exc)(f"per-request mask '{name}' ({ref}): {exc}") from exc
        load_checked_mask(str(path), f"additional_config['{MASKS_KEY}']['{name}']", hf_config, model_name,
                          additional_config)
        additional_config[MASKS_KEY][name] = str(path.resolve())


@dataclass
class Registry:
    """The masks of one engine: row 0 = no mask, row i = the i-th registered name."""

    names: list[str]
    masks: list[Any]  # HeadMask per name
    default: Optional[str] = None
    digests: dict[str, str] = field(default_factory=dict)

    def row(self, name: Optional[str]) -> int:
        return 0 if name in (None, NONE) else self.names.index(name) + 1


def load_registry(additional_config, hf_config=None, model_name: str = "") -> Optional[Registry]:
    """The registered masks, read from the files the front end resolved (None when there are none)."""
    from ...core.mask import HeadMask
    from .plugin import config_spec

    masks, default = registry_config(additional_config)
    if not masks:
        return None
    loaded = [HeadMask.load(ref) for ref in masks.values()]
    if hf_config is not None:
        spec = config_spec(hf_config, model_name)
        for mask in loaded:
            mask.validate(spec)
    return Registry(list(masks), loaded, default, {n: mask_digest(m) for n, m in zip(masks, loaded)})


# --------------------------------------------------------------------------- front end: each request
def request_mask_name(extra_args, registry: Optional[Registry]) -> Optional[str]:
    """The registered name a request's extra_args pick (the default when they name none); None = no mask.
    Raises VLLMValidationError (HTTP 400) for anything else, without reading any file."""
    from vllm.exceptions import VLLMValidationError

    name = (extra_args or {}).get(REQUEST_KEY) if isinstance(extra_args, dict) else None
    if name is None:
        return registry.default if registry is not None else None
    if not isinstance(name, str):
        raise VLLMValidationError(f"{REQUEST_KEY} must be the name of a registered head mask, got {name!r}",
                                  parameter=REQUEST_KEY)
    if name == NONE:
        return None
    if registry is None:
        raise VLLMValidationError(f"{REQUEST_KEY}={name!r}: this server has no per-request head masks (start it with "
                                  f"--additional-config '{{\"{MASKS_KEY}\": {{\"NAME\": \"MASK\"}}}}')",
                                  parameter=REQUEST_KEY)
    if name not in registry.names:
        raise VLLMValidationError(f"{REQUEST_KEY}={name[:80]!r} is not a head mask registered with this server; "
                                  f"registered: {', '.join(registry.names)} (or '{NONE}')", parameter=REQUEST_KEY)
    return name


def _frontend_registry(processor) -> Optional[Registry]:
    cached = processor.__dict__.get("_lahis_registry", False)
    if cached is False:
        cached = load_registry(getattr(processor.vllm_config, "additional_config", None))
        processor.__dict__["_lahis_registry"] = cached
    return cached


def _wrap_process_inputs(original):
    import functools

    @functools.wraps(original)
    def process_inputs(self, request_id, prompt, params, *args, **kwargs):
        registry = _frontend_registry(self)
        extra = getattr(params, "extra_args", None)
        if registry is None and not (isinstance(extra, dict) and REQUEST_KEY in extra):
            return original(self, request_id, prompt, params, *args, **kwargs)
        # pooling requests carry no extra_args: they get no mask (None)
        name = request_mask_name(extra, registry) if hasattr(params, "extra_args") else None
        request = original(self, request_id, prompt, params, *args, **kwargs)
        sampling = getattr(request, "sampling_params", None)
        if sampling is not None:
            sampling.extra_args = {**(sampling.extra_args or {}), REQUEST_KEY: name or NONE}
        if name is not None:
            salt = f"lahis:{registry.digests[name]}"
            request.cache_salt = f"{request.cache_salt}|{salt}" if request.cache_salt else salt
        return request

    from .plugin import _WRAPPED

    setattr(process_inputs, _WRAPPED, True)
    return process_inputs


# --------------------------------------------------------------------------- worker: buffers and hooks
@dataclass
class _Gains:
    registry: Optional[Registry] = None
    rows: Any = None  # the shared [max_tokens] int64 buffer on the model's device
    modules: dict = field(default_factory=dict)  # layer -> o_proj module
    columns: tuple = (0, 0)  # this rank's input columns (start, stop)


_GAINS = _Gains()


def _gain_pre_hook(module, args):
    x = args[0]  # [tokens, local_heads * head_dim]: the concatenated head outputs this rank holds
    gains = module.lahis_gains[module.lahis_rows[: x.shape[0]]]  # [tokens, local_heads * head_dim]
    return (x * gains,) + tuple(args[1:])


def install_gains(model, vllm_config) -> None:
    """Give each layer's output projection its gain table, the shared row buffer and the pre-hook (workers, once the
    weights are loaded, before anything is compiled or captured)."""
    import torch

    from ...core import head_layout
    from ...core.errors import LahisError
    from .plugin import _o_proj_locator, config_spec, o_proj_weight_pattern

    model_config = vllm_config.model_config
    registry = load_registry(vllm_config.additional_config, model_config.hf_config, str(model_config.model))
    _GAINS.registry = registry
    if registry is None:
        return
    spec = config_spec(model_config.hf_config, str(model_config.model))
    suffix, _ = _o_proj_locator(model_config.hf_config)
    pattern = re.compile(o_proj_weight_pattern(suffix).pattern.replace(r"\.weight$", "$"))
    found: dict[int, Any] = {}
    for name, module in model.named_modules():
        m = pattern.search(name)
        if m is not None and int(m.group(1)) < spec.num_layers:
            if int(m.group(1)) in found:
                raise LahisError(f"two modules look like layer {m.group(1)}'s output projection; set LAHIS_ARCH")
            found[int(m.group(1))] = module
    missing = sorted(set(range(spec.num_layers)) - set(found))
    pipeline = int(getattr(getattr(vllm_config, "parallel_config", None), "pipeline_parallel_size", 1) or 1)
    if pipeline > 1 and found:
        missing = []  # each pipeline stage holds some layers only: it gains those it holds
    if missing:
        raise LahisError(f"per-request head masks: no output projection '<layer>.{suffix}' in vLLM's model for layers "
                         f"{missing}; this architecture cannot take per-request masks (serve folded masks instead)")
    width = spec.num_heads * spec.head_dim
    param = next(model.parameters())
    device, dtype = param.device, model_config.dtype
    scheduler = vllm_config.scheduler_config
    size = int(scheduler.max_num_batched_tokens) + int(scheduler.max_num_seqs)
    rows = torch.zeros(size, dtype=torch.int64, device=device)  # [max tokens]: row of each token; 0 = no mask
    for layer, module in sorted(found.items()):
        local = int(getattr(module, "input_size_per_partition", width))
        rank, tp = int(getattr(module, "tp_rank", 0)), int(getattr(module, "tp_size", 1))
        if local * tp != width:
            raise LahisError(f"layer {layer}'s output projection holds {local} of {width} input columns on each of "
                             f"{tp} ranks; per-request masks need the heads split evenly over the ranks")
        start = rank * local
        table = torch.ones(len(registry.names) + 1, width)  # [masks + 1, num_heads * head_dim], row 0 = no mask
        for i, mask in enumerate(registry.masks, start=1):
            table[i] = head_layout.feature_scales(mask.values[layer].float(), spec.head_dim)
        module.register_buffer("lahis_gains", table[:, start:start + local].to(device, dtype).contiguous(),
                               persistent=False)  # [masks + 1, local_heads * head_dim]
        module.register_buffer("lahis_rows", rows, persistent=False)
        module.register_forward_pre_hook(_gain_pre_hook)
        _GAINS.columns = (start, start + local)
    _GAINS.rows, _GAINS.modules = rows, found
    log.info("lahis_ctrl: per-request head masks %s registered (default %s) on %d layers, input columns %d:%d",
             registry.names, registry.default or NONE, len(found), *_GAINS.columns)


def _fill(rows_per_request, tokens_per_request) -> None:
    """Write each token's mask row into the shared buffer, in place (same address every step)."""
    import numpy as np

    per_token = np.repeat(np.asarray(rows_per_request, dtype=np.int64), tokens_per_request)  # [tokens]
    n = per_token.shape[0]
    if n > _GAINS.rows.shape[0]:
        from ...core.errors import LahisError

        raise LahisError(f"a step of {n} tokens exceeds the per-request mask buffer ({_GAINS.rows.shape[0]})")
    try:
        from vllm.utils.torch_utils import async_tensor_h2d

        async_tensor_h2d(per_token, out=_GAINS.rows[:n])  # pinned host copy, non-blocking
    except ImportError:  # other vLLM versions: a plain copy
        import torch

        _GAINS.rows[:n].copy_(torch.from_numpy(per_token), non_blocking=True)


def _row_of_state(state) -> int:
    """A V1 request's row, cached on its CachedRequestState (looked up once per request, not per step)."""
    row = state.__dict__.get("_lahis_row")
    if row is None:
        extra = getattr(state.sampling_params, "extra_args", None) or {}
        row = _GAINS.registry.row(extra.get(REQUEST_KEY))
        state.__dict__["_lahis_row"] = row
    return row


def _wrap_v1_prepare_inputs(original):
    import functools

    import numpy as np

    @functools.wraps(original)
    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):
        result = original(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)
        if _GAINS.rows is not None:
            num_reqs = self.input_batch.num_reqs
            req_ids = self.input_batch.req_ids[:num_reqs]
            rows = np.fromiter((_row_of_state(self.requests[r]) for r in req_ids), dtype=np.int64, count=num_reqs)
            _fill(rows, num_scheduled_tokens[:num_reqs])
        return result

    from .plugin import _WRAPPED

    setattr(_prepare_inputs, _WRAPPED, True)
    return _prepare_inputs


def _rows_by_index(runner):
    """V2 runner: [request slots] host array, the mask row of the request in each persistent slot."""
    import numpy as np

    table = runner.__dict__.get("_lahis_rows_by_index")
    if table is None:
        table = np.zeros(max(1024, int(getattr(runner, "max_num_reqs", 0) or 0) + 1), dtype=np.int64)
        runner.__dict__["_lahis_rows_by_index"] = table
    return table


def _wrap_v2_add_requests(original):
    import functools

    import numpy as np

    @functools.wraps(original)
    def add_requests(self, scheduler_output, *args, **kwargs):
        result = original(self, scheduler_output, *args, **kwargs)
        if _GAINS.rows is not None:
            table = _rows_by_index(self)
            for new in scheduler_output.scheduled_new_reqs:
                index = self.req_states.req_id_to_index[new.req_id]
                if index >= table.shape[0]:  # more persistent request slots than expected: grow the host table
                    table = np.concatenate([table, np.zeros(index + 1 - table.shape[0], np.int64)])
                    self.__dict__["_lahis_rows_by_index"] = table
                extra = getattr(new.sampling_params, "extra_args", None) or {}
                table[index] = _GAINS.registry.row(extra.get(REQUEST_KEY))
        return result

    from .plugin import _WRAPPED

    setattr(add_requests, _WRAPPED, True)
    return add_requests


def _wrap_v2_prepare_inputs(original):
    import functools

    import numpy as np

    @functools.wraps(original)
    def prepare_inputs(self, *args, **kwargs):
        batch = original(self, *args, **kwargs)
        if _GAINS.rows is not None:
            rows = _rows_by_index(self)[batch.idx_mapping_np[: batch.num_reqs]]
            counts = np.diff(batch.query_start_loc_np[: batch.num_reqs + 1])  # tokens of each request, in order
            _fill(rows, counts)
        return batch

    from .plugin import _WRAPPED

    setattr(prepare_inputs, _WRAPPED, True)
    return prepare_inputs


def status(worker) -> dict:
    """What a worker serves per request: {'rank', 'names', 'default', 'columns', 'layers'}."""
    registry = _GAINS.registry
    return {"rank": getattr(worker, "rank", None), "names": list(registry.names) if registry else [],
            "default": registry.default if registry else None, "columns": list(_GAINS.columns),
            "layers": sorted(_GAINS.modules),
            "table_shape": list(next(iter(_GAINS.modules.values())).lahis_gains.shape) if _GAINS.modules else None}
