"""Artifacts: the project's files, and the fingerprints and checkpoints that make long runs resumable.

* `save_tensors` / `load_tensors`: safetensors with metadata, used by HeadMask, HeadScores and every
  checkpoint. safetensors writes its metadata in hash-map order, which changes from process to process, so
  the header is rewritten with sorted keys: the same tensors and metadata always give the same bytes.
  Metadata values are strings: `raw` ones are stored as they are (the format tag, a version), `facts` are
  JSON-encoded (so numbers, None and lists come back as they were).
* `fingerprint(...)`: a short hash of canonical JSON (and token ids): what a stored result must share with a
  run for the run to reuse it.
* `Checkpoint`: one resumable unit's progress in one file (safetensors tensors + JSON state) that refuses,
  with the reason, a file written by another run's settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from .errors import LahisError
from .fileio import atomic_path


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint(key: Any, ids: Optional[Iterable[Sequence[int]]] = None, length: int = 16) -> str:
    """sha256 of `key` as sorted-key JSON (and of token id lists, length-prefixed), cut to `length` hex digits.

    The serialisation (json.dumps with sort_keys, default separators) is the one the results and checkpoints
    of earlier versions were fingerprinted with, so what they stored is still recognised.
    """
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    if ids is not None:
        import numpy as np

        for seq in ids:
            h.update(len(seq).to_bytes(4, "little"))
            h.update(np.asarray(seq, dtype=np.int64).tobytes())
    return h.hexdigest()[:length]


def _sorted_header(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header re-serialised with sorted keys (8-byte aligned)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads with spaces so tensor data stays 8-byte aligned
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def encode_metadata(raw: Mapping[str, str] = {}, facts: Mapping[str, Any] = {}) -> dict[str, str]:
    meta = {k: str(v) for k, v in raw.items()}
    meta.update({k: json.dumps(v, ensure_ascii=False, sort_keys=True) for k, v in facts.items()})
    return meta


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, Any], raw: Mapping[str, str] = {},
                 facts: Mapping[str, Any] = {}) -> Path:
    """Write a safetensors file atomically, byte-reproducibly (sorted header)."""
    from safetensors.torch import save

    # a copy of each: safetensors refuses tensors that share memory (a view saved next to its base)
    blob = save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
                metadata=encode_metadata(raw, facts) or None)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(_sorted_header(blob))
    return path


def load_tensors(path: str | os.PathLike, what: str = "file", required: Sequence[str] = (),
                 formats: Sequence[str] = ()) -> tuple[dict, dict[str, str]]:
    """(tensors, raw metadata strings) of a safetensors file, with one-line errors naming the file.

    `required`: tensor names that must be present; `formats`: accepted values of the metadata 'format'
    tag (a file without a tag is accepted: files written before tags existed).
    """
    from safetensors import safe_open

    from .fileio import check_input_file

    path = check_input_file(path, what)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
            missing = [k for k in required if k not in keys]
            if missing:
                raise LahisError(f"{path} has no tensor named {missing[0]!r} (it holds {sorted(keys)}); is it a {what}?")
            tensors = {k: f.get_tensor(k) for k in keys}
    except LahisError:
        raise
    except Exception as exc:
        raise LahisError(f"{path} is not a readable safetensors file ({exc}); is it a {what}?") from exc
    tag = meta.get("format")
    if formats and tag is not None and tag not in formats:
        raise LahisError(f"{path} is a '{tag}' file, not a {what} ({' or '.join(formats)})")
    return tensors, meta


def decode_fact(meta: Mapping[str, str], key: str, path: Path | str = "") -> Any:
    """One JSON-encoded metadata value, with an error naming the file when it is not JSON."""
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, TypeError) as exc:
        raise LahisError(f"{path}: the metadata entry {key!r} is not valid JSON ({meta[key]!r:.60})") from exc


def model_family(model_type: str) -> str:
    # A multimodal Gemma 3 checkpoint and its text-only decoder have the same heads.
    return {"gemma3_text": "gemma3"}.get(model_type, model_type)


def check_fits(what: str, facts: Mapping[str, Any], shape: tuple[int, int], spec) -> None:
    """Raise MaskMismatchError, naming both sides, unless an artifact made for `facts` (model_type, model_name,
    head_dim) with a [layers, heads] `shape` fits the model described by `spec` (a ModelSpec)."""
    from .errors import MaskMismatchError

    # each message names both sides by what differs, and only that (never "head_dim 16 vs head_dim 16")
    mine = f"{what} for {facts.get('model_type')} '{facts.get('model_name') or '?'}'"
    theirs = f"model {spec.model_type} '{spec.name_or_path or '?'}'"
    fix = f"Use a {what} made for this model."
    if tuple(shape) != tuple(spec.shape):
        raise MaskMismatchError(f"shape mismatch: {mine} [{shape[0]} layers x {shape[1]} heads] vs {theirs} "
                                f"[{spec.num_layers} layers x {spec.num_heads} heads]. {fix}")
    if model_family(str(facts.get("model_type"))) != model_family(spec.model_type):
        raise MaskMismatchError(f"model_type mismatch: {mine} vs {theirs} (the same {shape[0]} layers x {shape[1]} "
                                f"heads, another architecture). {fix}")
    if facts.get("head_dim") and spec.head_dim and facts.get("head_dim") != spec.head_dim:
        raise MaskMismatchError(f"head_dim mismatch: {mine} has head_dim {facts.get('head_dim')}, {theirs} has "
                                f"head_dim {spec.head_dim}. {fix}")


class Checkpoint:
    """Progress or result of one resumable unit of work in one file, stored with its fingerprint.

    `.safetensors`: tensors plus a JSON state in the metadata (scoring, soft-mask training). `.json`: a JSON
    state only (evaluation generations, `lahis reproduce` steps). `load()` returns (tensors, state) or None
    when there is nothing to resume; a file made with other settings, or from another model's weights
    (`identity`, core.identity.model_identity, stored beside the fingerprint so files of earlier versions keep
    resuming), is refused with a message naming the file, unless `replace=True`, in which case it is ignored
    (and overwritten by the next `save`).
    """

    FORMAT = "lahis-checkpoint/1"
    IDENTITY_KEY = "model_identity"

    def __init__(self, path: str | os.PathLike, fingerprint: str, what: str = "checkpoint", replace: bool = False,
                 identity: Optional[Mapping[str, Any]] = None):
        self.path, self.fingerprint, self.what, self.replace = Path(path), fingerprint, what, replace
        self.identity = dict(identity) if identity else None

    @property
    def _json(self) -> bool:
        return self.path.suffix == ".json"

    def read(self) -> Optional[tuple[dict, dict]]:
        """(tensors, state) as stored, whatever its fingerprint; None when there is no file."""
        if not self.path.is_file():
            return None
        if self._json:
            from .fileio import read_json

            obj = read_json(self.path, self.what)
            if not isinstance(obj, dict):
                raise LahisError(f"{self.path} is not a {self.what} (expected a JSON object)")
            state = obj.get("state", {})
            return {}, {**state, "fingerprint": obj.get("fingerprint")}
        tensors, meta = load_tensors(self.path, self.what)
        try:
            state = json.loads(meta["state"]) if "state" in meta else dict(meta)
        except json.JSONDecodeError as exc:
            raise LahisError(f"{self.path}: unreadable {self.what} state ({exc}); move it away to start over") from exc
        return tensors, state

    def load(self) -> Optional[tuple[dict, dict]]:
        from .identity import check_same_model, same_model

        found = self.read()
        if found is None:
            return None
        if not same_model(found[1].get(self.IDENTITY_KEY), self.identity):
            if self.replace:
                return None
            check_same_model(found[1].get(self.IDENTITY_KEY), self.identity, f"{self.what} {self.path}",
                             fix="it cannot be resumed with this model; write to another output (or replace it "
                                 "with --overwrite)")
        if found[1].get("fingerprint") != self.fingerprint:
            if self.replace:
                return None
            raise LahisError(
                f"{self.path} was written by a run with other settings: a {self.what} made from other texts or settings "
                "(model, mode, lengths, seed...) cannot be resumed by this run; rerun with the same settings, or write "
                "to another output")
        return found

    def save(self, tensors: Mapping[str, Any], state: Mapping[str, Any]) -> Path:
        if self.identity:
            state = {**state, self.IDENTITY_KEY: self.identity}
        if self._json:
            from .fileio import write_json

            state = {k: v for k, v in state.items() if k != "fingerprint"}
            return write_json(self.path, {"format": self.FORMAT, "fingerprint": self.fingerprint, "state": state})
        return save_tensors(self.path, tensors, raw={"format": self.FORMAT,
                                                     "state": canonical_json({**state, "fingerprint": self.fingerprint})})

    def clear(self) -> None:
        if self.path.exists():
            self.path.unlink()
