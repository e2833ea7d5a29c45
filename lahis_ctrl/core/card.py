"""Model cards for shared masks: a Hub mask repo, a folded checkpoint, a PEFT LoRA or IA3 adapter.

One card generator for every kind of export, so they all say the same things: the model the mask belongs to (its
Hub id, revision and weights fingerprint), the languages, every head changed and its scale, how the mask was made,
its evaluation with intervals when the result files are given, and how to use it with transformers, lm-eval, vLLM
and PEFT. The YAML header is huggingface_hub's `ModelCardData`, so the Hub indexes the base model, the languages
and the tags. Cards name files by their name only: a published card carries no local absolute paths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .errors import LahisError

KINDS = ("hub", "folded", "lora", "ia3")
Z95 = 1.959963984540054  # the normal 97.5% quantile: lm-eval's stderr -> a 95% interval


def mask_identity(mask) -> dict[str, Any]:
    """The model identity a mask records (core.identity.model_identity of the model it was made on); the fields a
    mask of an earlier version lacks are None."""
    found = None
    for source in (getattr(mask, "identity", None), getattr(mask, "model_identity", None),
                   (mask.extra or {}).get("model_identity"), (mask.extra or {}).get("identity")):
        if isinstance(source, Mapping):
            found = dict(source)
            break
    found = found or {}
    for key in ("name_or_path", "hub_id", "revision", "weights_fingerprint", "source"):
        found.setdefault(key, None)
    if not found["name_or_path"]:
        found["name_or_path"] = mask.model_name or None
    return found


def resolve_base(mask, base_model: Optional[str] = None, base_revision: Optional[str] = None) \
        -> tuple[str, Optional[str]]:
    """(base model, its revision) to record: the one given, else the Hub id the mask records, else its name/path."""
    from .hub import cached_revision, is_hub_id

    ident = mask_identity(mask)
    base = base_model or ident["hub_id"] or ident["name_or_path"] or mask.model_name or ""
    revision = base_revision
    if revision is None and ident["revision"] and base in (ident["hub_id"], ident["name_or_path"]):
        revision = ident["revision"]
    if revision is None and is_hub_id(base):
        revision = cached_revision(base)  # the commit of the copy in huggingface_hub's cache, when there is one
    return str(base), revision


# ---------------------------------------------------------------------------------------------- evaluation files
def evaluation_section(paths: Sequence) -> str:
    """Markdown for the given result files: `lahis evaluate` folders / results.json (its own table, with Wilson
    intervals and paired changes with CI and p), lm-eval results JSON (each metric with a 95% interval from
    lm-eval's standard error). Unknown files are refused, naming them."""
    from .fileio import read_json

    parts = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "results.json"
        if not path.is_file():
            raise LahisError(f"evaluation file not found: {path} (a `lahis evaluate --out` folder, its results.json, "
                             "or an lm-eval results JSON)")
        obj = read_json(path, "evaluation results")
        if isinstance(obj, dict) and "summary" in obj and "lang" in obj:
            parts.append(_lahis_evaluate(path, obj))
        elif isinstance(obj, dict) and isinstance(obj.get("results"), dict):
            parts.append(_lm_eval(path, obj))
        else:
            raise LahisError(f"{path} is neither a `lahis evaluate` results.json nor an lm-eval results file")
    return "\n".join(parts)


def _lahis_evaluate(path: Path, obj: Mapping) -> str:
    table = path.with_name("results.md")
    if not table.is_file():
        raise LahisError(f"{path}: its table {table.name} (written by `lahis evaluate` beside it) is missing; "
                         "give the whole output folder")
    settings = obj.get("settings") or {}
    shown = {k: settings[k] for k in ("model", "split", "style", "max_new_tokens", "items", "n") if k in settings}
    lines = [f"### XQuAD-style QA ({obj['lang']}), `lahis evaluate`", ""]
    if shown:
        lines += ["Settings: " + ", ".join(f"{k}={_short(v)}" for k, v in shown.items()), ""]
    body = table.read_text(encoding="utf-8").strip().splitlines()
    body = [line for line in body if not line.startswith("### ")]  # its own title is replaced by ours
    lines += [line for line in body]
    lines += ["", "Accuracy intervals are 95% Wilson intervals; changes against the first row are paired (bootstrap "
              "95% CI, exact McNemar p).", ""]
    return "\n".join(lines)


def _lm_eval(path: Path, obj: Mapping) -> str:
    config = obj.get("config") or {}
    model_args = config.get("model_args")
    lines = [f"### lm-evaluation-harness ({config.get('model', 'model')})", ""]
    if model_args:
        lines += [f"model_args: `{_strip_paths(model_args)}`", ""]
    lines += ["| task | metric | value | 95% CI | n |", "|---|---|---:|---|---:|"]
    n_samples = obj.get("n-samples") or {}
    for task in sorted(obj["results"]):
        metrics = obj["results"][task]
        for key in sorted(metrics):
            value = metrics[key]
            if "_stderr," in key or key == "alias" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name, _, filt = key.partition(",")
            stderr = metrics.get(f"{name}_stderr,{filt}")
            if isinstance(stderr, (int, float)) and math.isfinite(stderr):
                ci = f"[{value - Z95 * stderr:.4f}, {value + Z95 * stderr:.4f}]"
            else:
                ci = "none (lm-eval gave no standard error; rerun with bootstrap_iters > 0)"
            n = (n_samples.get(task) or {}).get("effective", "")
            lines.append(f"| {task} | {name}{'' if filt in ('', 'none') else ' (' + filt + ')'} | {value:.4f} | "
                         f"{ci} | {n} |")
    lines += ["", "Intervals: value +- 1.96 x lm-eval's standard error (normal approximation).", ""]
    return "\n".join(lines)


def _strip_paths(text: str) -> str:
    """model_args with local absolute paths cut to their last part (a card is published)."""
    out = []
    for part in str(text).split(","):
        key, eq, value = part.partition("=")
        if eq and value.startswith(("/", "~")):
            value = Path(value).name
        out.append(key + eq + value)
    return ",".join(out)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"[{len(value)} values]"
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------- the card
def mask_card(mask, kind: str = "hub", *, repo_id: Optional[str] = None, base_model: Optional[str] = None,
              base_revision: Optional[str] = None, evaluation: Sequence = (), files: Sequence[str] = (),
              lora_rank: Optional[int] = None) -> str:
    """The README.md of a shared mask. `kind`: 'hub' (a mask repo `repo_id`), 'folded' (a checkpoint with the mask
    in its weights), 'lora' or 'ia3' (PEFT adapters); `files` lists what travels with the card."""
    from huggingface_hub import ModelCardData

    from .. import __version__
    from .hub import DEFAULT_FILE, is_hub_id

    if kind not in KINDS:
        raise ValueError(f"unknown card kind {kind!r}; one of {KINDS}")
    ident = mask_identity(mask)
    base, revision = resolve_base(mask, base_model, base_revision)
    on_hub = is_hub_id(base)
    if kind == "hub" and not on_hub and Path(base).is_absolute():
        base = Path(base).name  # a published card names no local folders
    changed = mask.changed_heads()
    languages = [mask.language] if mask.language and mask.language.isalpha() and len(mask.language) <= 3 else None
    tags = ["lahis-ctrl", "head-mask", "attention-heads"]
    library = None
    if kind == "hub" and "adapter_config.json" in files or kind == "ia3":
        tags += ["peft", "ia3"]
        library = "peft"
    elif kind == "lora":
        tags += ["peft", "lora"]
        library = "peft"
    data = ModelCardData(base_model=base if on_hub else None, language=languages, library_name=library, tags=tags,
                         base_model_relation=("adapter" if library == "peft" else "finetune") if on_hub else None)
    ref = repo_id or "path/to/this/folder"
    lang = f" ({mask.language})" if mask.language else ""
    title = {"hub": f"Head mask{lang} for {base or mask.model_type}",
             "folded": f"{base or mask.model_type} with a head mask{lang} folded into its weights",
             "lora": f"Head mask{lang} for {base or mask.model_type} as a PEFT LoRA adapter",
             "ia3": f"Head mask{lang} for {base or mask.model_type} as a PEFT IA3 adapter"}[kind]
    out = [f"# {title}", ""]
    out += [f"A per-head gain on {len(changed)} of the {mask.num_layers} x {mask.num_heads} attention heads of "
            f"`{base}`, made with [lahis-ctrl](https://pypi.org/project/lahis-ctrl/). Head *h* of a layer owns the "
            f"input features `h*{mask.head_dim}:(h+1)*{mask.head_dim}` of that layer's attention output projection; "
            "the mask multiplies them by its scale (1 leaves a head alone, 0 silences it, 3 amplifies it)."]
    if kind == "folded":
        out += ["", "**The mask is already folded into the output-projection weights of this checkpoint.** Load it "
                "like any model and do not apply the mask again (lahis-ctrl refuses to, unless told)."]
    if kind in ("lora", "ia3"):
        out += ["", "Apply this adapter to the **unmasked** base model."]
    out += ["", "## The model it belongs to", "", "| | |", "|---|---|",
            f"| base model | `{base}`{'' if on_hub else ' (not a Hub id: a local copy)'} |",
            f"| revision | {('`' + revision + '`') if revision else 'not recorded'} |",
            f"| weights fingerprint | {('`' + ident['weights_fingerprint'] + '`') if ident['weights_fingerprint'] else 'not recorded'} |",
            f"| architecture | {mask.model_type}: {mask.num_layers} layers x {mask.num_heads} heads"
            f"{f' ({mask.num_kv_heads} KV heads)' if mask.num_kv_heads else ''}, head_dim {mask.head_dim} |"]
    if ident.get("source"):
        out.append(f"| weights | {ident['source']} |")
    out += [f"| lahis-ctrl | {mask.extra.get('lahis_ctrl_version') or __version__} |", "",
            "The weights fingerprint is `lahis_ctrl.core.identity.weights_fingerprint(model)` (a sha256 over every "
            "parameter's name, shape, dtype and a fixed sample of its values) of the weights the mask was made on. "
            "The mask applies to any model of the same shape, but its effect was measured on those weights: compare "
            "the fingerprint of yours to be sure you have them.", ""]
    out += ["## What it changes", "", f"Language: {mask.language or 'not recorded'}. "
            f"{len(changed)} heads changed:", "", "| layer | head | scale |", "|---:|---:|---:|"]
    out += [f"| {layer} | {head} | {float(mask.values[layer, head]):.6g} |" for layer, head in changed]
    out += ["", "## How it was made", "", f"Method: `{mask.method}`."]
    settings = {k: v for k, v in (mask.extra or {}).items()
                if k not in ("model_identity", "identity", "lahis_ctrl_version", "source")}
    if settings:
        out += ["", "| setting | value |", "|---|---|"]
        for key in sorted(settings):
            value = settings[key]
            if key == "epoch_loss" and isinstance(value, list) and value:
                value = f"{len(value)} epochs, last {value[-1]:.4f}"
            elif key == "trainable_heads" and isinstance(value, list):
                value = f"{len(value)} heads"
            out.append(f"| {key} | {_short(value)} |")
    out += ["", "## Evaluation", ""]
    out += [evaluation_section(evaluation)] if evaluation else \
        ["No evaluation results were given when this card was written.", ""]
    out += _usage(kind, ref, base, mask, files, lora_rank)
    return "---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(out).rstrip() + "\n"


def _usage(kind: str, ref: str, base: str, mask, files: Sequence[str], lora_rank: Optional[int]) -> list[str]:
    q = f'"{ref}"'
    out = ["## How to use it", ""]
    if kind == "folded":
        out += ["```python", "from transformers import AutoModelForCausalLM", f"model = AutoModelForCausalLM.from_pretrained({q})",
                "```", "", "```bash", f"lm_eval --model hf --model_args pretrained={ref} --tasks xquad_de",
                f"vllm serve {ref}    # or: python -m vllm.entrypoints.openai.api_server --model {ref}", "```"]
        return out
    mask_ref = ref if kind == "hub" else f"{ref}/lahis_mask.safetensors"
    out += ["transformers (`pip install lahis-ctrl`):", "", "```python", "import lahis_ctrl as lc",
            "from transformers import AutoModelForCausalLM", f'model = AutoModelForCausalLM.from_pretrained("{base}")',
            f'mask = lc.HeadMask.load("{mask_ref}")', "with lc.apply_head_mask(model, mask):   # or lc.fold_head_mask",
            "    ...", "```", "", "lm-evaluation-harness:", "", "```bash",
            f"lm_eval --model lahis_hf --model_args pretrained={base},mask={mask_ref} --tasks xquad_de",
            f"lm_eval --model lahis_vllm --model_args pretrained={base},mask={mask_ref} --tasks xquad_de", "```", "",
            "vLLM, folded at load, or chosen per request among masks registered at start:", "", "```bash",
            f"vllm serve {base} --additional-config '{{\"lahis_mask\": \"{mask_ref}\"}}'",
            f"vllm serve {base} --additional-config '{{\"lahis_masks\": {{\"m\": \"{mask_ref}\"}}}}'",
            "# then per request: extra_body={\"vllm_xargs\": {\"lahis_mask\": \"m\"}}",
            "```", ""]
    if kind == "lora":
        out += ["PEFT and vLLM's multi-LoRA serving:", "", "```python", "from peft import PeftModel",
                f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), {q})', "```", "",
                "```bash", f"vllm serve {base} --enable-lora --max-lora-rank {lora_rank or 'R'} --max-loras 2 "
                f"--lora-modules m={ref}", "```", ""]
    elif kind == "ia3" or "adapter_config.json" in files:
        out += ["PEFT (an IA3 adapter on the attention output projections, with them listed as feed-forward so "
                "IA3 scales their input: exactly the head mask):", "", "```python",
                "from peft import AutoPeftModelForCausalLM, PeftModel",
                f"model = AutoPeftModelForCausalLM.from_pretrained({q})   # loads {base} too",
                f'# or: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), {q})', "```", "",
                "vLLM does not serve IA3 adapters: use the per-request masks above.", ""]
    return out
