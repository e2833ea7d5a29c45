"""Where the attention heads of a transformers causal LM live: the ONE place that knows model internals.

Every other module (hooks, folding, scoring, vLLM, LoRA export) asks this one for:
  * the attention output projection of each layer (the module whose INPUT is the concatenation of the
    per-head attention outputs, [batch, pos, num_heads * head_dim]: head h owns input features
    h*head_dim : (h+1)*head_dim),
  * the number of query heads, KV heads (GQA) and head_dim.

A head mask is always per QUERY head: with grouped-query attention several query heads share one KV
head, but each query head still writes its own head_dim slice of the o_proj input.

Architectures that are not in `_KNOWN` need an `ArchSpec` override, either passed as `arch=` to the
functions that take a model, or registered once with `register_architecture(model_type, spec)`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import LahisError, UnknownArchitectureError

# model_type -> (suffix of the output-projection module inside one decoder layer, weight layout).
# "linear": nn.Linear, weight [out_features, in_features] -> a head owns weight COLUMNS.
# "conv1d": transformers' GPT-2 Conv1D, weight [in_features, out_features] -> a head owns weight ROWS.
_KNOWN: dict[str, tuple[str, str]] = {
    "llama": ("self_attn.o_proj", "linear"),
    "mistral": ("self_attn.o_proj", "linear"),
    "mixtral": ("self_attn.o_proj", "linear"),
    "qwen2": ("self_attn.o_proj", "linear"),
    "qwen2_moe": ("self_attn.o_proj", "linear"),
    "qwen3": ("self_attn.o_proj", "linear"),
    "qwen3_moe": ("self_attn.o_proj", "linear"),
    "gemma": ("self_attn.o_proj", "linear"),
    "gemma2": ("self_attn.o_proj", "linear"),
    "gemma3": ("self_attn.o_proj", "linear"),
    "gemma3_text": ("self_attn.o_proj", "linear"),
    "cohere": ("self_attn.o_proj", "linear"),
    "cohere2": ("self_attn.o_proj", "linear"),
    "phi3": ("self_attn.o_proj", "linear"),
    "olmo": ("self_attn.o_proj", "linear"),
    "olmo2": ("self_attn.o_proj", "linear"),
    "granite": ("self_attn.o_proj", "linear"),
    "gpt2": ("attn.c_proj", "conv1d"),
}

_REGISTERED: dict[str, "ArchSpec"] = {}

OVERRIDE_HELP = (
    "Pass an override naming the output projection with '{layer}' where the layer index goes, e.g.\n"
    "  Python: lahis_ctrl.ArchSpec(o_proj='model.layers.{layer}.attn.out_proj', num_heads=32, "
    "num_kv_heads=8, head_dim=128) as arch=..., or lahis_ctrl.register_architecture('<model_type>', spec)\n"
    "  CLI:    --arch '{\"o_proj\": \"model.layers.{layer}.attn.out_proj\", \"num_heads\": 32, "
    "\"num_kv_heads\": 8, \"head_dim\": 128}'\n"
    "The module must be a Linear (or GPT-2 Conv1D, layout='conv1d') whose input is the concatenation of "
    "the per-head attention outputs."
)


@dataclass(frozen=True)
class ArchSpec:
    """Override for an architecture `lahis_ctrl` does not know.

    o_proj: dotted module path of one layer's attention output projection, with '{layer}' for the index.
    num_heads / num_kv_heads / head_dim: taken from the config when left as None.
    layout: 'linear' (weight [out, in]) or 'conv1d' (GPT-2 style, weight [in, out]).
    """

    o_proj: str
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    layout: str = "linear"

    @classmethod
    def coerce(cls, value: "ArchSpec | dict | str | None") -> "ArchSpec | None":
        """Accept an ArchSpec, a dict, or a JSON string (as given on the command line)."""
        if value is None or isinstance(value, ArchSpec):
            return value
        if isinstance(value, str):
            import json

            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise UnknownArchitectureError(f"--arch is not valid JSON ({exc}).\n{OVERRIDE_HELP}") from exc
        if not isinstance(value, dict) or "o_proj" not in value:
            raise UnknownArchitectureError(f"an architecture override needs at least 'o_proj'.\n{OVERRIDE_HELP}")
        unknown = set(value) - {"o_proj", "num_heads", "num_kv_heads", "head_dim", "layout"}
        if unknown:
            raise UnknownArchitectureError(f"unknown keys in the architecture override: {sorted(unknown)}.\n{OVERRIDE_HELP}")
        spec = cls(**value)
        spec.check()
        return spec

    def check(self) -> None:
        """The override's own consistency: a module path with a '{layer}' placeholder, positive whole counts."""
        if not isinstance(self.o_proj, str) or not self.o_proj.strip():
            raise UnknownArchitectureError(f"the override's o_proj must be a module path.\n{OVERRIDE_HELP}")
        if self.o_proj.count("{layer}") > 1 or re.search(r"\{(?!layer\})", self.o_proj):
            raise UnknownArchitectureError(
                f"the override's o_proj '{self.o_proj}' may hold only one placeholder, '{{layer}}', where the layer "
                f"index goes.\n{OVERRIDE_HELP}")
        for name in ("num_heads", "num_kv_heads", "head_dim"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UnknownArchitectureError(f"the override's {name} must be a positive whole number, got {v!r}")
        if self.num_heads and self.num_kv_heads and self.num_heads % self.num_kv_heads:
            raise UnknownArchitectureError(f"the override's num_heads {self.num_heads} is not a multiple of its "
                                           f"num_kv_heads {self.num_kv_heads}")
        if self.layout not in ("linear", "conv1d"):
            raise UnknownArchitectureError(f"the override's layout must be 'linear' or 'conv1d', got {self.layout!r}")


def register_architecture(model_type: str, spec: ArchSpec) -> None:
    """Teach lahis_ctrl a new architecture for the whole process (e.g. before lm-eval or vLLM load it)."""
    _REGISTERED[model_type] = spec


@dataclass(frozen=True)
class ModelSpec:
    """The facts about a model that a head mask depends on."""

    model_type: str
    num_layers: int
    num_heads: int  # query heads per layer (what a mask indexes)
    num_kv_heads: int
    head_dim: int
    name_or_path: str = ""
    o_proj_names: tuple[str, ...] = field(default=(), compare=False)
    layout: str = "linear"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_layers, self.num_heads)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["o_proj_names"] = list(self.o_proj_names)
        return d


def text_config(config):
    """The decoder's config (multimodal models such as Gemma 3 keep it under text_config)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if getter is not None else config


def head_counts(config, arch: ArchSpec | None = None) -> tuple[int, int, int, int]:
    """(num_layers, num_heads, num_kv_heads, head_dim) from a transformers config."""
    tc = text_config(config)
    num_layers = getattr(tc, "num_hidden_layers", None) or getattr(tc, "n_layer", None)
    config_heads = getattr(tc, "num_attention_heads", None) or getattr(tc, "n_head", None)
    config_dim = getattr(tc, "head_dim", None)
    if arch is not None:  # an override may fill in what the config lacks, never contradict it
        for name, mine, theirs in (("num_heads", arch.num_heads, config_heads), ("head_dim", arch.head_dim, config_dim)):
            if mine and theirs and int(mine) != int(theirs):
                raise UnknownArchitectureError(
                    f"the override's {name}={mine} contradicts the model's config ({theirs}); drop it from the "
                    "override or fix it")
    num_heads = (arch and arch.num_heads) or config_heads
    if not num_layers or not num_heads:
        raise UnknownArchitectureError(
            f"cannot read the layer and head counts from the config of model_type "
            f"'{getattr(config, 'model_type', '?')}'.\n{OVERRIDE_HELP}"
        )
    num_kv_heads = (arch and arch.num_kv_heads) or getattr(tc, "num_key_value_heads", None) or num_heads
    head_dim = (arch and arch.head_dim) or config_dim
    if not head_dim:
        hidden = getattr(tc, "hidden_size", None) or getattr(tc, "n_embd", None)
        head_dim = hidden // num_heads
    return int(num_layers), int(num_heads), int(num_kv_heads), int(head_dim)


def _model_type(config) -> str:
    return getattr(text_config(config), "model_type", None) or config.model_type


def _check_against_known(arch: ArchSpec, model_type: str) -> None:
    """An override for an architecture lahis_ctrl knows must name the module it knows (an override naming q_proj on a
    Llama would scale something that is not the heads' outputs, without a word)."""
    if model_type not in _KNOWN:
        return
    suffix, layout = _KNOWN[model_type]
    if not arch.o_proj.endswith("." + suffix) or arch.layout != layout:
        raise UnknownArchitectureError(
            f"model_type '{model_type}' needs no override: its attention output projection is '*.<layer>.{suffix}' "
            f"({layout}), but the override names '{arch.o_proj}' ({arch.layout}), whose input is not the heads' "
            "outputs; leave the override out")


def _resolve_arch(model, arch) -> ArchSpec | None:
    arch = ArchSpec.coerce(arch)
    if arch is not None:
        return arch
    for mt in (_model_type(model.config), model.config.model_type):
        if mt in _REGISTERED:
            return _REGISTERED[mt]
    return None


def describe(model, arch: ArchSpec | dict | str | None = None) -> ModelSpec:
    """Locate every layer's attention output projection and read the head counts.

    Raises UnknownArchitectureError (naming the override) when the model is not understood.
    """
    arch = _resolve_arch(model, arch)
    model_type = _model_type(model.config)
    num_layers, num_heads, num_kv_heads, head_dim = head_counts(model.config, arch)
    modules = dict(model.named_modules())

    if arch is not None:
        _check_layer_placeholder(arch, num_layers)
        names = [arch.o_proj.format(layer=i) for i in range(num_layers)]
        missing = [n for n in names if n not in modules]
        if missing:
            raise UnknownArchitectureError(
                f"the override's o_proj pattern '{arch.o_proj}' names modules that do not exist, "
                f"e.g. '{missing[0]}'. Run `lahis info MODEL --modules` to list the model's modules.\n{OVERRIDE_HELP}"
            )
        if arch is not _REGISTERED.get(model_type):  # a registered override is the user's deliberate choice
            _check_against_known(arch, model_type)
        layout = arch.layout
    else:
        if model_type not in _KNOWN:
            raise UnknownArchitectureError(
                f"lahis_ctrl does not know where the attention heads of model_type '{model_type}' are. "
                f"Known: {', '.join(sorted(_KNOWN))}.\n{OVERRIDE_HELP}"
            )
        suffix, layout = _KNOWN[model_type]
        # Decoder layers sit in a ModuleList, so their projections are named '<prefix>.<index>.<suffix>';
        # a multimodal wrapper may add a prefix (model.language_model.layers...). Vision towers use other
        # module names (out_proj), so matching the text suffix is enough.
        pattern = re.compile(r"^(?P<prefix>.*?)(?P<index>\d+)\." + re.escape(suffix) + "$")
        found: dict[int, str] = {}
        for name in modules:
            m = pattern.match(name)
            if m:
                found.setdefault(int(m.group("index")), name)
        names = [found.get(i) for i in range(num_layers)]
        if None in names or len(found) != num_layers:
            raise UnknownArchitectureError(
                f"expected {num_layers} modules named '*.<layer>.{suffix}' in this {model_type} model, "
                f"found {len(found)}.\n{OVERRIDE_HELP}"
            )

    in_features = num_heads * head_dim
    for name in names:
        mod = modules[name]
        weight = getattr(mod, "weight", None)
        if weight is None:
            raise UnknownArchitectureError(f"'{name}' has no weight; it is not an output projection.\n{OVERRIDE_HELP}")
        got = _in_features(mod, layout)
        if got is not None and got != in_features:
            raise UnknownArchitectureError(
                f"'{name}' takes {got} input features but {num_heads} heads x head_dim {head_dim} = "
                f"{in_features}; the head counts or the module are wrong.\n{OVERRIDE_HELP}"
            )
    return ModelSpec(
        model_type=model_type,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        name_or_path=str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")),
        o_proj_names=tuple(names),
        layout=layout,
    )


def _in_features(mod, layout: str) -> int | None:
    if hasattr(mod, "in_features"):
        return int(mod.in_features)
    w = mod.weight
    if w.dim() != 2 or w.numel() == 0:
        return None  # quantized or repacked weights: trust the config
    return int(w.shape[1] if layout == "linear" else w.shape[0])


def spec_from_config(config, name: str = "", arch: "ArchSpec | dict | str | None" = None) -> ModelSpec:
    """The facts a mask depends on, from a transformers config alone (no weights): what files and options are
    checked against before a large model loads (and what vLLM's plugin checks a mask against)."""
    arch = ArchSpec.coerce(arch)
    layers, heads, kv_heads, head_dim = head_counts(config, arch)
    model_type = _model_type(config)
    return ModelSpec(model_type=model_type, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                     head_dim=head_dim, name_or_path=name)


def check_max_length(config, value, option: str = "max_length") -> None:
    """A token length the model cannot attend over fails before the weights load, not after an hour of scoring."""
    limit = getattr(text_config(config), "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if value is not None and limit and int(value) > int(limit):
        raise LahisError(f"--{option} {value} is longer than the model's {limit} positions; use at most {limit}")


def check_arch(arch, config) -> "ArchSpec | None":
    """An override checked against a model's config before any weights load: counts that contradict the config
    and a module path without '{layer}' on a multi-layer model are refused with the reason."""
    arch = ArchSpec.coerce(arch)
    if arch is None:
        return None
    layers, _, _, _ = head_counts(config, arch)
    _check_layer_placeholder(arch, layers)
    _check_against_known(arch, _model_type(config))
    return arch


def _check_layer_placeholder(arch: "ArchSpec", num_layers: int) -> None:
    if num_layers > 1 and "{layer}" not in arch.o_proj:
        raise UnknownArchitectureError(
            f"the override's o_proj '{arch.o_proj}' has no '{{layer}}' placeholder, so all {num_layers} layers would "
            f"map to the same module: write the layer index as {{layer}}.\n{OVERRIDE_HELP}")


def spec_of(target) -> ModelSpec:
    """A ModelSpec from a model, or the ModelSpec itself."""
    if isinstance(target, ModelSpec):
        return target
    if hasattr(target, "named_modules"):
        return describe(target)
    raise TypeError(f"expected a model or a ModelSpec, got {type(target).__name__}")


def output_projections(model, spec: ModelSpec | None = None, arch=None) -> list:
    """The output-projection modules, one per layer, in layer order."""
    spec = spec or describe(model, arch)
    modules = dict(model.named_modules())
    return [modules[n] for n in spec.o_proj_names]
