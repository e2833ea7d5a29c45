"""The same checks wherever a mask, a scale or an option enters (Python API, lm-eval model args, the CLI), results
checked before they are written (no NaN score file, no LCB rate for n = 0 without saying so), and one error
boundary: everything the package raises reaches a user as one line with a clear type naming the argument (Python)
or one line and exit status 2 (lahis, lm_eval)."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lahis_ctrl.core.errors import LahisError, MaskMismatchError
from lahis_ctrl.core.mask import HeadMask
from tiny import save_tiny, tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")  # 3 layers x 4 heads


# ------------------------------------------------------------------------------------------ Python API arguments
FROM_HEADS = [
    # (heads, scale, error type, phrase)
    ((1, 2), 0.0, TypeError, "got one pair (1, 2): write [(1, 2)]"),
    ([(True, 1)], 0.0, TypeError, "booleans, floats and strings are not head indices"),
    ([(1, False)], 0.0, TypeError, "is not a pair of whole numbers"),
    ([(1.0, 2)], 0.0, TypeError, "is not a pair of whole numbers"),
    ([("1", "2")], 0.0, TypeError, "is not a pair of whole numbers"),
    ([(1, 2, 3)], 0.0, TypeError, "is not a (layer, head) pair"),
    ([1, 2, 3], 0.0, TypeError, "1 is not a (layer, head) pair"),
    ("1:2", 0.0, TypeError, "heads must be a list of (layer, head) pairs"),
    (5, 0.0, TypeError, "heads must be a list of (layer, head) pairs"),
    ([(3, 0)], 0.0, MaskMismatchError, "layers 0-2, heads 0-3"),
    ([(0, -1)], 0.0, MaskMismatchError, "is outside this llama model"),
    ([(0, 1)], "3", TypeError, "scale must be a number"),
    ([(0, 1)], True, TypeError, "scale must be a number"),
    ([(0, 1)], float("nan"), ValueError, "scale must be a finite number"),
    ([(0, 1)], float("inf"), ValueError, "scale must be a finite number"),
]


@pytest.mark.parametrize("heads, scale, error, phrase", FROM_HEADS, ids=[repr(c[:2]) for c in FROM_HEADS])
def test_from_heads_names_what_is_wrong(model, heads, scale, error, phrase):
    with pytest.raises(error) as err:
        HeadMask.from_heads(model, heads, scale=scale)
    assert phrase in str(err.value) and "\n" not in str(err.value)


def test_from_heads_accepts_what_people_pass(model):
    import numpy as np

    for heads in ([(0, 1)], [[0, 1]], ((0, 1),), [np.array([0, 1])], [torch.tensor([0, 1])], {(0, 1)}, iter([(0, 1)])):
        assert HeadMask.from_heads(model, heads, scale=0.5).changed_heads() == [(0, 1)]
    assert HeadMask.from_heads(model, [(np.int64(2), np.int32(3))], scale=np.float32(2)).values[2, 3] == 2


@pytest.mark.parametrize("values, error, phrase", [
    (torch.empty(0, 4), MaskMismatchError, "at least one layer and one head; got shape (0, 4)"),
    (torch.empty(3, 0), MaskMismatchError, "got shape (3, 0)"),
    (torch.empty(0), MaskMismatchError, "[num_layers, num_heads] matrix; got a tensor of shape (0,)"),
    (torch.ones(2, 3, 4), MaskMismatchError, "matrix; got a tensor of shape (2, 3, 4)"),
    (torch.ones(3, 4, dtype=torch.complex64), TypeError, "real numbers"),
    ([[1, "a"]], TypeError, "tensor of numbers"),
    (torch.full((3, 4), float("nan")), MaskMismatchError, "NaN or inf"),
])
def test_mask_tensors_that_are_no_masks_are_refused(model, values, error, phrase):
    with pytest.raises(error) as err:
        HeadMask.from_tensor(values, model)
    assert phrase in str(err.value)


@pytest.mark.parametrize("other, error, phrase", [
    (3, TypeError, "multiplies only with another HeadMask"),
    (0.5, TypeError, "mask.with_values(mask.values * x)"),
    ("x", TypeError, "not with str"),
    (torch.ones(3, 4), TypeError, "not with Tensor"),
])
def test_mask_arithmetic_that_is_not_composition_is_refused(model, other, error, phrase):
    with pytest.raises(error, match=None) as err:
        HeadMask.ones(model) * other
    assert phrase in str(err.value)
    with pytest.raises(TypeError):
        other * HeadMask.ones(model)


def test_composition_of_masks(model):
    gemma = tiny_model("gemma3")
    with pytest.raises(MaskMismatchError, match="cannot combine masks of shapes"):
        HeadMask.ones(model) * HeadMask.ones(gemma)
    both = HeadMask.from_heads(model, [(0, 1)], 0.0) * HeadMask.from_heads(model, [(0, 1), (1, 2)], 3.0)
    assert both.values[0, 1] == 0 and both.values[1, 2] == 3 and both.model_identity is not None


@pytest.mark.parametrize("arg, error, phrase", [
    ([], TypeError, "must be a mapping {language: HeadScores or [layers, heads] tensor}"),
    ([torch.rand(3, 4)], TypeError, "got a list"),
    ("runs/scores", TypeError, "got a str"),
    ({1: torch.rand(3, 4)}, TypeError, "keys are language codes"),
    ({"en": "x"}, TypeError, "scores of 'en' must be HeadScores or a [layers, heads] tensor"),
    ({"en": torch.rand(3)}, MaskMismatchError, "must be a [layers, heads] matrix"),
    ({}, LahisError, "no languages to classify"),
])
def test_classify_heads_names_a_wrong_argument(arg, error, phrase):
    from lahis_ctrl.lahis.heads import classify_heads

    with pytest.raises(error) as err:
        classify_heads(arg)
    assert phrase in str(err.value)


@pytest.mark.parametrize("arch, phrase", [
    ({"o_proj": "model.layers.{layer}.self_attn.q_proj"}, "needs no override"),
    ({"o_proj": "model.layers.{layer}.self_attn.o_proj", "layout": "conv1d"}, "(conv1d), whose input"),
    ({"o_proj": "model.layers.{layer}.attn.nope"}, "do not exist"),
])
def test_an_override_that_contradicts_a_known_architecture_is_refused(model, arch, phrase):
    from lahis_ctrl.core.architecture import describe
    from lahis_ctrl.core.errors import UnknownArchitectureError

    with pytest.raises(UnknownArchitectureError) as err:
        describe(model, arch)
    assert phrase in str(err.value)
    assert describe(model, {"o_proj": "model.layers.{layer}.self_attn.o_proj"}).shape == (3, 4)  # the right one


ROWS = [{"id": "1", "context": "Berlin ist die Hauptstadt.", "question": "Was?", "answers": {"text": ["Berlin"]}}]
API_MISUSE = [
    # (call, error, phrase): public functions name the argument that is wrong
    (lambda m, t: __import__("lahis_ctrl").score_heads(m, t, "one text", progress=False), LahisError,
     "texts must be a list of strings, not one string"),
    (lambda m, t: __import__("lahis_ctrl").score_heads(m, t, [1, 2], progress=False), LahisError,
     "texts must be strings; item 0"),
    (lambda m, t: __import__("lahis_ctrl").score_heads(m, t, ["a b"], mode="faithful", lr=float("nan"),
                                                       progress=False), LahisError, "lr must be a finite number"),
    (lambda m, t: __import__("lahis_ctrl").score_languages(m, t, "en", progress=False), TypeError,
     "languages must be a list of language codes"),
    (lambda m, t: __import__("lahis_ctrl").evaluate_masks(m, t, "de", ["de.safetensors"], ROWS), TypeError,
     "masks must be a mapping"),
    (lambda m, t: __import__("lahis_ctrl").HeadScores(torch.ones(3, 4), torch.ones(3, 4), torch.ones(3, 4),
                                                      model_type="llama", head_dim=16).top_heads("3"), TypeError,
     "n is a number of heads"),
    (lambda m, t: __import__("lahis_ctrl").apply_head_mask(m, 3).__enter__(), TypeError,
     "expected a HeadMask, a path or a tensor"),
    (lambda m, t: __import__("lahis_ctrl").train_mask(m, t, "de", "nope.safetensors", rows=ROWS), LahisError,
     "LAHIS score file not found: nope.safetensors"),
]


@pytest.mark.parametrize("call, error, phrase", API_MISUSE, ids=[c[2][:40] for c in API_MISUSE])
def test_public_functions_name_a_wrong_argument(model, call, error, phrase):
    with pytest.raises(error) as err:
        call(model, tiny_tokenizer())
    assert phrase in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ results are checked too
def test_a_diverged_faithful_run_stops_with_its_cause_and_writes_no_score_file(tmp_path, capsys):
    """`lahis score --mode faithful --lr 1e30`: one line naming the lr, exit 2, no NaN score file."""
    from lahis_ctrl.cli import main

    model_dir = save_tiny(tmp_path / "m", "llama")
    rc = main(["score", "--model", str(model_dir), "--languages", "en", "--texts", "4", "--max_length", "32",
               "--mode", "faithful", "--lr", "1e30", "--out", str(tmp_path / "sc")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lahis: error:")]
    assert rc == 2 and len(err) == 1 and "non-finite gradients" in err[0] and "lr=1e+30" in err[0], err
    assert not list((tmp_path / "sc").glob("en.safetensors"))


def test_a_score_file_is_never_nan(tmp_path):
    from lahis_ctrl.lahis.scores import HeadScores

    v = torch.rand(3, 4)
    v[1, 2] = float("nan")
    s = HeadScores(v, v, torch.ones(3, 4), model_type="llama", head_dim=16, language="en", mode="faithful",
                   extra={"lr": 1e30})
    with pytest.raises(LahisError, match=r"hold NaN or inf \(1 of 12 heads, first L1H2 in scores\): faithful mode "
                                         r"diverged: its learning rate lr=1e\+30"):
        s.save(tmp_path / "en.safetensors")
    assert not list(tmp_path.iterdir())


def test_lcb_rates_of_nothing_scorable_are_nan_and_say_so(caplog):
    from lahis_ctrl.integrations.lm_eval.task_utils import lcb_lcpr, lcb_lpr, lcb_wpr

    skipped = [{"language": "de", "source": "okapi", "skipped": True, "line_error": False, "word_error": False}] * 3
    with caplog.at_level(logging.WARNING, logger="lahis_ctrl"):
        values = [lcb_lpr(skipped), lcb_wpr(skipped), lcb_lcpr(skipped)]
    assert all(math.isnan(v) for v in values)
    assert sum("none of the 3 completions could be scored (n = 0" in r.getMessage() for r in caplog.records) == 3
    scored = skipped[:2] + [{"language": "de", "source": "okapi", "skipped": False, "line_error": True,
                             "word_error": False}]
    assert lcb_lpr(scored) == 0.0  # one scored, failed: a real rate, no warning needed


def test_stop_strings_work_for_a_byte_level_tokenizer_without_a_decoder():
    """transformers' StopStringCriteria raises 'substring not found' for such a tokenizer; greedy_generate looks for
    the stop strings in the decoded text instead."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from lahis_ctrl.core.lm import greedy_generate

    m = tiny_model("llama")
    backend = Tokenizer.from_str(tiny_tokenizer().backend_tokenizer.to_str())
    backend.decoder = None
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    with pytest.raises(ValueError, match="substring not found"):  # what the field's own machinery does
        m.generate(**tok(["Paris is"], return_tensors="pt"), max_new_tokens=3, stop_strings=["\nQ:"], tokenizer=tok,
                   do_sample=False)
    free = greedy_generate(m, tok, ["Paris is", "The quick"], max_new_tokens=8)
    stop = free[0][2:4]  # a string the first continuation holds
    cut = greedy_generate(m, tok, ["Paris is", "The quick"], max_new_tokens=8, stop=[stop, "\nQ:"])
    assert cut[0] == free[0].split(stop, 1)[0] and stop not in cut[0]
    assert cut[1] == free[1].split(stop, 1)[0]


# ------------------------------------------------------------------------------------------ one boundary: lahis
DEVICE_CASES = [
    ("gpu", "--device gpu: not a device"),
    ("cuda", "--device cuda: no CUDA GPU is visible to torch"),
    ("cuda:7", "--device cuda:7"),
    ("tpu", "--device tpu: not a device"),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusals of a machine without a GPU")
@pytest.mark.parametrize("command", ["score", "train-mask", "evaluate"])
@pytest.mark.parametrize("device, phrase", DEVICE_CASES, ids=[c[0] for c in DEVICE_CASES])
def test_a_device_that_is_not_there_is_one_line_before_any_model_loads(tmp_path, capsys, monkeypatch, command,
                                                                       device, phrase):
    from lahis_ctrl.cli import main

    monkeypatch.setattr("lahis_ctrl.core.loading.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    model_dir = save_tiny(tmp_path / "m", "llama")
    args = {"score": ["score", "--languages", "en", "--max_length", "16"],
            "train-mask": ["train-mask", "--lang", "en", "--pick", "random", "--data", "embedded"],
            "evaluate": ["evaluate", "--lang", "en", "--data", "embedded"]}[command]
    out = tmp_path / ("o.safetensors" if command == "train-mask" else "o")
    rc = main([*args, "--model", str(model_dir), "--device", device, "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lahis: error:")]
    assert rc == 2 and len(err) == 1 and phrase in err[0], err
    assert not out.exists()


# ------------------------------------------------------------------------------------------ one boundary: lm_eval
LM_EVAL_CASES = [
    # (model_args, other lm_eval args, the phrase of the one line)
    ("heads=0:1,scale=-5", [], "heads=0:1 with scale=-5: scales must lie in [0, 100]"),
    ("heads=0:1,scale=1000", [], "scale=1000: scales must lie in [0, 100]"),
    ("heads=0:1,scale=nan", [], "scale=nan is not a finite number"),
    ("heads=0:1,scale=abc", [], "scale='abc' is not a number"),
    ("heads=0:9", [], "outside this llama model"),
    ("heads=nonsense", [], "cannot read heads 'nonsense'"),
    ("", ["--device", "gpu"], "device=gpu: not a device"),
    ("", ["--device", "cuda:3"], "device=cuda:3"),
    ("", ["--metadata", '{"lcb_shots": 9}', "--tasks", "lcb_monolingual_de"], "lcb_shots must be a whole number from 0"),
]


@pytest.mark.parametrize("model_args, extra, phrase", LM_EVAL_CASES, ids=[c[2][:30] for c in LM_EVAL_CASES])
def test_this_packages_refusals_under_plain_lm_eval_are_one_line_and_exit_2(tmp_path, model_args, extra, phrase):
    """What `lahis` refuses with one line and exit 2, `lm_eval` refuses the same way for this package's model type
    and tasks (not lm-eval's exit 1 with a 50-line traceback)."""
    model_dir = save_tiny(tmp_path / "m", "llama")
    args = f"pretrained={model_dir}" + (f",{model_args}" if model_args else "")
    tasks = [] if "--tasks" in extra else ["--tasks", "xquad_de"]
    device = [] if "--device" in extra else ["--device", "cpu"]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "LAHIS_CACHE": str(tmp_path / "cache")}
    lm_eval = Path(sys.executable).parent / "lm_eval"
    proc = subprocess.run([str(lm_eval), "--model", "lahis_hf", "--model_args", args, *tasks, *device, "--limit", "1",
                           *extra], capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and phrase in errors[0], errors
    assert errors[0].startswith(("lahis_hf: error: ", "lm_eval: error: ")) and "Traceback" not in proc.stderr


@pytest.mark.parametrize("ids_in", ["input", "compared"])
def test_audit_compare_refuses_to_pair_by_line_order_when_only_one_side_has_ids(tmp_path, capsys, ids_in):
    import json

    from lahis_ctrl.cli import main

    texts = ["The capital of France is Paris.", "Berlin ist die Hauptstadt.", "Madrid es la capital."]
    with_ids = [{"id": str(i), "expected_lang": "en", "generation": t} for i, t in enumerate(texts)]
    without = [{"expected_lang": "en", "generation": t} for t in reversed(texts)]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first, second = (with_ids, without) if ids_in == "input" else (without, with_ids)
    a.write_text("".join(json.dumps(r) + "\n" for r in first))
    b.write_text("".join(json.dumps(r) + "\n" for r in second))
    assert main(["audit", str(a), "--compare", str(b), "--out", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lahis: error:")]
    assert len(err) == 1 and "cannot be matched item by item" in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_stored_nan_score_file_is_not_reused(tmp_path):
    """A score file of an earlier version that holds NaN is refused, not handed back as this run's scores."""
    from safetensors.torch import load_file, save_file

    from lahis_ctrl.lahis.scoring import score_languages

    m, tok = tiny_model("llama"), tiny_tokenizer()
    kw = dict(n=2, max_length=16, progress=False, out_dir=tmp_path)
    score_languages(m, tok, ["en"], **kw)
    path = tmp_path / "en.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["scores"][0, 0] = float("nan")
    save_file(tensors, str(path), metadata=meta)  # what a diverged run of an earlier version left
    with pytest.raises(LahisError, match=r"hold NaN or inf .*; pass overwrite \(--overwrite\) to rescore it"):
        score_languages(m, tok, ["en"], **kw)
    assert torch.isfinite(score_languages(m, tok, ["en"], overwrite=True, **kw)["en"].scores).all()
