"""evaluate_masks: generation-only continuations, metrics, several masks, jsonl, resume; the two CLI commands."""

import json

import pytest
import torch
from tiny import save_tiny, tiny_model

from lahis_ctrl.core.errors import LahisError, MaskMismatchError
from lahis_ctrl.eval.evaluate import evaluate_masks, format_table, parse_mask_args
from lahis_ctrl.core.mask import HeadMask
from lahis_ctrl.corpora.prompts import format_prompt
from lahis_ctrl.eval.qa_metrics import contains

ROWS = [
    {"id": "a", "context": "Paris is the capital of France.", "question": "What is the capital of France?",
     "answers": {"text": ["Paris"], "answer_start": [0]}},
    {"id": "b", "context": "The fox jumps over the lazy dog.", "question": "What does the fox jump over?",
     "answers": {"text": ["the lazy dog"], "answer_start": [18]}},
    {"id": "c", "context": "Berlin ist die Hauptstadt.", "question": "Was ist die Hauptstadt?",
     "answers": {"text": ["Berlin"], "answer_start": [0]}},
]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def test_evaluate_several_masks(llama, tok, tmp_path):
    zero = HeadMask.from_heads(llama, [(0, 0), (1, 2)], scale=0.0)
    report = evaluate_masks(llama, tok, "en", {"original": None, "zeroed": zero}, ROWS, max_new_tokens=4,
                            batch_size=2, out_dir=tmp_path)
    assert list(report.summary) == ["original", "zeroed"]
    assert len(report.records) == 2 * len(ROWS)
    for rec in report.records:
        assert set(rec) >= {"id", "lang", "expected_lang", "mask", "generation", "gold", "correct", "exact_match", "f1"}
        assert rec["lang"] == rec["expected_lang"] == "en"
        # the continuation only: the answer is in every prompt, a random model does not produce it
        row = next(r for r in ROWS if r["id"] == rec["id"])
        assert contains(format_prompt(row, "en") + rec["generation"], rec["gold"]) == 1.0
        assert rec["correct"] == bool(contains(rec["generation"], rec["gold"]))
    for name, s in report.summary.items():
        recs = [r for r in report.records if r["mask"] == name]
        assert s["n"] == 3 and s["accuracy"] == sum(r["correct"] for r in recs) / 3
        assert 0.0 <= s["exact_match"] <= s["f1"] + 1e-9 <= 1.0 + 1e-9
    # masked generations differ from the original ones (two heads silenced)
    gens = {n: [r["generation"] for r in report.records if r["mask"] == n] for n in report.summary}
    assert gens["original"] != gens["zeroed"]
    lines = (tmp_path / "examples.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == report.records
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == report.summary
    assert "| zeroed | 3 |" in (tmp_path / "results.md").read_text()


def test_resume_reuses_generations(llama, tok, tmp_path, monkeypatch):
    first = evaluate_masks(llama, tok, "en", {"original": None}, ROWS, max_new_tokens=3, batch_size=2, out_dir=tmp_path)
    import lahis_ctrl.core.lm as generation

    def fail(*a, **k):
        raise AssertionError("generated again")

    monkeypatch.setattr(generation, "greedy_generate", fail)
    again = evaluate_masks(llama, tok, "en", {"original": None}, ROWS, max_new_tokens=3, batch_size=2, out_dir=tmp_path)
    assert again.records == first.records
    # another run's generations are neither mixed in nor replaced: refused, unless overwrite says so
    with pytest.raises(LahisError, match="other settings"):
        evaluate_masks(llama, tok, "en", {"original": None}, ROWS, max_new_tokens=5, out_dir=tmp_path)
    with pytest.raises(AssertionError, match="generated again"):
        evaluate_masks(llama, tok, "en", {"original": None}, ROWS, max_new_tokens=5, out_dir=tmp_path, overwrite=True)


def test_bad_inputs(llama, tok, tmp_path):
    other = HeadMask.ones(tiny_model("gemma3"))  # 4 layers: another model
    with pytest.raises(MaskMismatchError):
        evaluate_masks(llama, tok, "en", {"other": other}, ROWS)
    with pytest.raises(LahisError, match="empty"):
        evaluate_masks(llama, tok, "en", {"original": None}, [])
    with pytest.raises(LahisError, match="not found"):
        parse_mask_args(["none", f"lahis={tmp_path / 'missing.safetensors'}"])
    with pytest.raises(LahisError, match="two masks"):
        parse_mask_args(["none", "original=none"])
    assert parse_mask_args(["none"]) == {"original": None}


def test_format_table():
    table = format_table({"original": {"n": 10, "accuracy": 0.5, "exact_match": 0.2, "f1": 0.3},
                          "lahis": {"n": 10, "accuracy": 0.6, "exact_match": 0.2, "f1": 0.35}})
    assert "| lahis | 10 | 60.0 [31.3, 83.2] | 20.0 | 35.0 | +10.0 |" in table  # Wilson 6/10: 0.313-0.832


def test_cli_train_and_evaluate(tmp_path, capsys):
    from lahis_ctrl.cli import main

    model_dir = save_tiny(tmp_path / "tiny", "llama")
    mask_path = tmp_path / "random.safetensors"
    rc = main(["train-mask", "--lang", "en", "--model", str(model_dir), "--pick", "random", "--trainable_heads", "2",
               "--epochs", "1", "--data", "embedded", "--train_size", "2", "--max_length", "64",
               "--out", str(mask_path)])
    assert rc == 0 and mask_path.is_file()
    mask = HeadMask.load(mask_path)
    assert mask.method == "random-soft-mask" and len(mask.changed_heads()) == 2
    assert not (tmp_path / "random.safetensors.ckpt").exists()  # per-epoch checkpoints go once the mask is written
    out = tmp_path / "eval"
    rc = main(["evaluate", "--lang", "en", "--model", str(model_dir), "--data", "embedded", "--limit", "2",
               "--max_new_tokens", "2", "--mask", f"[none, random={mask_path}]", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| original | 2 |" in text and "| random | 2 |" in text
    assert len((out / "examples.jsonl").read_text().splitlines()) == 4
    # user errors: one line, exit status 2
    assert main(["evaluate", "--lang", "xx", "--model", str(model_dir), "--data", "embedded"]) == 2
    assert main(["train-mask", "--lang", "en", "--model", str(model_dir), "--data", "embedded"]) == 2  # no scores
    assert "lahis: error:" in capsys.readouterr().err


def test_masks_are_compared_pairwise_with_intervals_and_exact_mcnemar():
    from lahis_ctrl.eval.evaluate import compare_masks

    # 10 items: the second mask fixes items 0-5 and breaks item 9 (6 vs 1 discordant pairs)
    base = [0] * 9 + [1]
    other = [1] * 6 + [0] * 4
    records = [{"mask": "original", "correct": bool(c), "exact_match": float(c), "f1": float(c)} for c in base]
    records += [{"mask": "lahis", "correct": bool(c), "exact_match": float(c), "f1": float(c)} for c in other]
    c = compare_masks(records, "original")["lahis"]["accuracy"]
    assert c["effect"] == pytest.approx(0.5) and c["n"] == 10
    assert c["p_value"] == pytest.approx(2 * (1 + 7) / 2 ** 7)  # exact McNemar: 2 P(X <= 1), X ~ Bin(7, 1/2)
    assert c["ci"][0] <= 0.5 <= c["ci"][1]
    assert c["method"].endswith("exact McNemar p")
    table = format_table({"original": {"n": 10, "accuracy": 0.1, "exact_match": 0.1, "f1": 0.1},
                          "lahis": {"n": 10, "accuracy": 0.6, "exact_match": 0.6, "f1": 0.6}},
                         comparisons={"lahis": {"accuracy": c}})
    assert "| lahis | 10 | 60.0 [31.3, 83.2] | 60.0 | 60.0 | +50.0 [" in table and "p=0.125" in table
