"""The step cache of `lahis reproduce`: the lazily loaded model and every step's stored result."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

from ...core.artifacts import Checkpoint
from ...core.artifacts import fingerprint as _fingerprint


class _Run:
    """The state of one `reproduce` call: output folders, the lazily loaded model, and the step log."""

    def __init__(self, model: str, dtype: str, device_map: Optional[str], device: Optional[str], out: Path,
                 force: bool = False, work: Optional[Path] = None, random_init: Optional[int] = None):
        self.source, self.dtype, self.device_map, self.device = model, dtype, device_map, device
        # the random-weight control: the same architecture, re-initialised from its config with this seed
        self.random_init = random_init
        self.model_name = model if random_init is None else f"{model} (random weights, seed {random_init})"
        self.out, self.work = out, work or out / "work"
        self.force = force
        self.log: list[dict] = []
        self._model = self._tok = None

    # the model is loaded on first use: a rerun whose steps are all done never loads it
    @property
    def model(self):
        if self._model is None:
            from ...core.loading import load_model

            t = time.perf_counter()
            print(f"   loading {self.model_name} ({self.dtype}) ...", flush=True)
            if self.random_init is None:
                self._model = load_model(self.source, dtype=self.dtype, device_map=self.device_map)
            else:
                self._model = _random_weights(self.source, self.dtype, self.random_init, self.model_name)
            if self.device and self.device_map is None:
                from ...core.loading import check_device

                self._model = self._model.to(check_device(self.device))
            print(f"   loaded in {time.perf_counter() - t:.0f} s", flush=True)
        return self._model

    @property
    def tok(self):
        if self._tok is None:
            from ...core.loading import load_tokenizer

            self._tok = load_tokenizer(self.source)
        return self._tok

    def _log_name(self, name: str) -> str:
        return name if self.random_init is None else f"control/{name}"

    @property
    def identity(self) -> dict:
        """The model's identity (core.identity), recorded with every step result. Known without loading the
        weights when the model's files are unchanged since it was last computed (core.identity.known_identity): a
        rerun whose steps are all done still never loads the model."""
        if getattr(self, "_identity", None) is None:
            self._identity = self._known_identity()
        return self._identity

    def _known_identity(self) -> dict:
        import torch

        from ...core.identity import known_identity

        return known_identity(self.source, f"{self.dtype}|{self.random_init}|{torch.__version__}", lambda: self.model)

    @property
    def spec(self):
        from ...core.architecture import describe

        return describe(self.model)

    def step(self, name: str, key: Any, fn: Callable[[], Any],
             still_valid: Callable[[Any], bool] = lambda result: True) -> Any:
        """fn()'s JSON-able result, or the stored one when this step already ran with the same `key` (and
        `still_valid(stored result)`, e.g. the files it names still exist)."""
        ckpt = step_checkpoint(self.work, name, key)
        if not self.force:  # a folder holding another model's results is refused, never reused or overwritten
            from ...core.identity import check_same_model

            found = ckpt.read()
            if found is not None:
                check_same_model(found[1].get("model_identity"), self.identity,
                                 f"the '{self._log_name(name)}' step stored in {self.out}",
                                 fix="choose another --out, or pass --overwrite to recompute every step there")
        stored = None if self.force else load_step(ckpt)
        if stored is not None and still_valid(stored["result"]):
            print(f"   {name}: done in an earlier run ({stored.get('seconds', 0):.0f} s then), skipped", flush=True)
            self.log.append({"step": self._log_name(name), "skipped": True, "seconds": stored.get("seconds", 0.0)})
            return stored["result"]
        if ckpt.path.is_file() and not self.force:
            print(f"   {name}: settings changed or files gone since the stored result; running it again", flush=True)
        t = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
        ckpt.save({}, {"key": key, "seconds": seconds, "result": result, "model_identity": self.identity})
        self.log.append({"step": self._log_name(name), "skipped": False, "seconds": seconds})
        return result


def _random_weights(name: str, dtype: str, seed: int, label: str):
    """The architecture of `name` (hub id, folder or embedded name), freshly initialised with `seed`: weights
    with no training, so anything it "shows" comes from the method, not from learned language heads."""
    import torch
    from transformers import AutoModelForCausalLM

    from ...core.loading import _dtype, load_config

    config = load_config(name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=_dtype(dtype) if dtype != "auto" else None)
    model.name_or_path = label
    model.config._name_or_path = label
    return model.eval()


def step_checkpoint(work: Path, name: str, key: Any) -> Checkpoint:
    """The stored result of one step: <work>/steps/<name>.json, valid for settings with this key's fingerprint."""
    return Checkpoint(Path(work) / "steps" / f"{name}.json", _fingerprint(key), "reproduce step result", replace=True)


def load_step(ckpt: Checkpoint) -> Optional[dict]:
    """The stored {"key", "seconds", "result"} of a step, or None when it is missing or its settings differ.

    Step files written before checkpoints had a format ({"fingerprint", "key", "seconds", "result"} at the top
    level) are migrated in place when they match: the finished step is kept, not recomputed.
    """
    found = ckpt.read()
    if found is None:
        return None
    _, state = found
    if "result" not in state and "format" not in _raw(ckpt.path):
        state = migrate_legacy_step(_raw(ckpt.path))
        if state.get("fingerprint") == ckpt.fingerprint:
            ckpt.save({}, state)
    if state.get("fingerprint") != ckpt.fingerprint or "result" not in state:
        return None
    return state


def _raw(path: Path) -> dict:
    from ...core.fileio import read_json

    obj = read_json(path, "reproduce step result")
    return obj if isinstance(obj, dict) else {}


def migrate_legacy_step(obj: dict) -> dict:
    """A pre-checkpoint step file as a checkpoint state (the same fingerprint, key, seconds and result)."""
    return {"fingerprint": obj.get("fingerprint"), "key": obj.get("key"), "seconds": obj.get("seconds", 0.0),
            "result": obj.get("result")}


def _header(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _one_percent(spec, n: Optional[int]) -> int:
    return int(n) if n is not None else max(2, int(0.01 * spec.num_layers * spec.num_heads))


def _model_facts(spec) -> dict:
    return {"name": spec.name_or_path, "model_type": spec.model_type, "layers": spec.num_layers,
            "heads": spec.num_heads, "kv_heads": spec.num_kv_heads, "head_dim": spec.head_dim}
