"""The artifact layer: byte-reproducible files, fingerprints, checkpoints that refuse another run's state."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lahis_ctrl.core.artifacts import Checkpoint, fingerprint, load_tensors, save_tensors
from lahis_ctrl.core.errors import LahisError

ROOT = Path(__file__).resolve().parents[1]

_WRITE = """
import sys, torch
from lahis_ctrl.core.mask import HeadMask
from lahis_ctrl.lahis.scores import HeadScores
from lahis_ctrl.core.artifacts import Checkpoint
out = sys.argv[1]
v = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
facts = dict(model_type="llama", head_dim=16, model_name="tiny", num_kv_heads=2)
HeadMask(v, language="de", method="manual", extra={"z": 1, "a": [1, 2], "m": {"y": 0, "b": 1}}, **facts).save(out + "/m.safetensors")
HeadMask(v, **facts).save(out + "/m.json")
HeadScores(v, v * 2, v / 3, language="de", num_texts=5, num_tokens=99, source="embedded",
           extra={"max_length": 32, "batch_size": 4, "dtype": "torch.float32"}, **facts).save(out + "/s.safetensors")
Checkpoint(out + "/c.safetensors", "fp", "checkpoint").save({"b": v, "a": v[0]}, {"z": 1, "a": 2, "done": 3})
"""


def test_identical_inputs_give_identical_bytes_across_processes(tmp_path):
    """safetensors writes metadata in hash-map order (random per process); the artifact layer sorts it."""
    outs = []
    for i in range(3):
        d = tmp_path / str(i)
        d.mkdir()
        subprocess.run([sys.executable, "-c", _WRITE, str(d)], check=True, cwd=ROOT, timeout=120,
                       env={"PYTHONHASHSEED": str(i), "PATH": "/usr/bin:/bin", "LAHIS_NO_LM_EVAL_HOOK": "1"})
        outs.append({p.name: p.read_bytes() for p in sorted(d.iterdir())})
    assert outs[0] == outs[1] == outs[2]
    assert set(outs[0]) == {"m.safetensors", "m.json", "s.safetensors", "c.safetensors"}


def test_saved_tensors_and_metadata_round_trip(tmp_path):
    t = {"x": torch.randn(3, 2), "y": torch.arange(4)}
    path = save_tensors(tmp_path / "f.safetensors", t, raw={"format": "demo/1"}, facts={"n": 3, "none": None, "l": [1]})
    tensors, meta = load_tensors(path, "demo file", required=("x",), formats=("demo/1",))
    assert torch.equal(tensors["x"], t["x"]) and torch.equal(tensors["y"], t["y"])
    assert meta["format"] == "demo/1" and json.loads(meta["n"]) == 3 and json.loads(meta["none"]) is None
    with pytest.raises(LahisError, match="is a 'demo/1' file, not a score file"):
        load_tensors(path, "score file", formats=("lahis-head-scores/1",))
    with pytest.raises(LahisError, match="no tensor named 'scores'"):
        load_tensors(path, "score file", required=("scores",))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LahisError, match="not a readable safetensors file"):
        load_tensors(tmp_path / "bad.safetensors", "head mask")


def test_fingerprint_is_stable_and_sensitive():
    key = {"b": [1, 2], "a": {"y": 1.5, "x": None}}
    assert fingerprint(key) == fingerprint({"a": {"x": None, "y": 1.5}, "b": [1, 2]})
    assert fingerprint(key) != fingerprint({**key, "b": [2, 1]})
    assert fingerprint(key, ids=[[1, 2], [3]]) != fingerprint(key, ids=[[1], [2, 3]])  # lengths are part of it
    assert len(fingerprint(key)) == 16 and len(fingerprint(key, length=64)) == 64
    # the serialisation earlier versions fingerprinted with (their stored steps and checkpoints stay valid)
    import hashlib

    assert fingerprint(key) == hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
def test_checkpoint_resumes_its_own_run_and_refuses_another(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    mine = Checkpoint(path, "aaa", "test checkpoint")
    assert mine.load() is None
    tensors = {"m": torch.ones(2)} if suffix == ".safetensors" else {}
    mine.save(tensors, {"done": 3})
    got_tensors, state = mine.load()
    assert state["done"] == 3 and set(got_tensors) == set(tensors)
    with pytest.raises(LahisError, match="written by a run with other settings"):
        Checkpoint(path, "bbb", "test checkpoint").load()
    assert Checkpoint(path, "bbb", "test checkpoint", replace=True).load() is None  # ignored, not deleted
    assert path.is_file()
    mine.clear()
    assert not path.exists()
