"""LAHIS scorer: gradients, faithful/fast modes, chunked loss, files, resumption, corpora, classification,
perplexity probes, plots and the CLI. Tiny random models except the `slow` Gemma 3 270M test."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from lahis_ctrl.core.control import apply_head_mask, scale_heads
from lahis_ctrl.corpora.texts import EMBEDDED_LANGUAGES, embedded_languages, join_lines, load_texts
from lahis_ctrl.core.errors import LahisError, MaskMismatchError
from lahis_ctrl.lahis.heads import HeadClassification, classify_heads, default_min_rep, top_specific_heads
from lahis_ctrl.core.architecture import describe
from lahis_ctrl.core.mask import HeadMask
from lahis_ctrl.eval.ppl import perplexity, ppl_cross, summarize, text_losses
from lahis_ctrl.core.lm import frozen as _frozen
from lahis_ctrl.lahis.scoring import (HeadScores, per_text_gradients, score_heads, score_languages,
                                sequence_losses)
from tiny import tiny_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river.",
    "Paris is the capital of France.",
    "Der schnelle braune Fuchs springt.",
    "El zorro salta sobre el perro perezoso y la capital es Madrid.",
    "भारत की राजधानी नई दिल्ली है।",
    "北京是中国的首都。",
    "Hello there",
]


def own_loss_grad(model, tok, text, m, max_length=64):
    """d(model's own loss)/d(m) for one text, the way a user would write it (no lahis_ctrl loss code)."""
    x = tok(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
    m = m.detach().clone().requires_grad_(True)
    with _frozen(model), scale_heads(model, m):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
    return loss.detach(), m.grad


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("arch,eps,rel", [
    ("gpt2", 1e-4, 1e-5),  # float64 end to end: a tight check
    ("llama", 1e-2, 2e-2),  # Llama's RMSNorm computes in float32 even in a float64 model: a looser one
])
def test_dloss_dm_matches_finite_difference(tok, arch, eps, rel):
    model = tiny_model(arch, dtype=torch.float64, attn_implementation="sdpa")
    spec = describe(model)
    x = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    m0 = torch.rand(spec.shape, dtype=torch.float64) + 0.5

    def loss_at(m):
        with scale_heads(model, m):
            return sequence_losses(model, x, torch.ones_like(x))[0][0]

    m = m0.clone().requires_grad_(True)
    with _frozen(model):
        loss_at(m).backward()
    for layer, head in [(0, 0), (1, 3), (2, 1)]:
        plus, minus = m0.clone(), m0.clone()
        plus[layer, head] += eps
        minus[layer, head] -= eps
        with torch.no_grad():
            fd = (loss_at(plus) - loss_at(minus)) / (2 * eps)
        assert m.grad[layer, head].item() == pytest.approx(fd.item(), rel=rel, abs=1e-9)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_fast_per_text_gradients_equal_separate_backwards(tok, arch):
    """One padded batch of unequal lengths gives each text the gradient of its own backward pass."""
    model = tiny_model(arch)
    spec = describe(model)
    lengths = [len(tok(t)["input_ids"]) for t in TEXTS[:5]]
    assert len(set(lengths)) > 1  # really unequal, so padding is exercised
    batched = per_text_gradients(model, tok, TEXTS[:5], batch_size=5)
    assert batched.shape == (5, spec.num_layers, spec.num_heads)
    for i, text in enumerate(TEXTS[:5]):
        _, g = own_loss_grad(model, tok, text, torch.ones(spec.shape))
        torch.testing.assert_close(batched[i], g, rtol=1e-4, atol=1e-7)


def test_fast_scores_are_the_reference_statistics_at_m1(tok):
    model = tiny_model("qwen2")
    g = torch.stack([own_loss_grad(model, tok, t, torch.ones(describe(model).shape))[1] for t in TEXTS])
    s = score_heads(model, tok, TEXTS, mode="fast", batch_size=3, progress=False)
    importance = (1000 * g.abs()).mean(0)
    negative = (g < 0).float().mean(0)
    torch.testing.assert_close(s.importance, importance, rtol=1e-4, atol=1e-6)
    assert torch.equal(s.negative_fraction, negative)
    torch.testing.assert_close(s.scores, importance * negative, rtol=1e-4, atol=1e-6)
    assert s.num_texts == len(TEXTS) and s.num_tokens == sum(len(tok(t)["input_ids"]) for t in TEXTS)


def test_faithful_equals_plain_per_text_loop(tok):
    """The reference algorithm written out by hand: per text backward, accumulate, AdamW(lr=1e-2) step."""
    model = tiny_model("gemma3")
    spec = describe(model)
    m = torch.ones(spec.shape, requires_grad=True)
    opt = torch.optim.AdamW([m], lr=1e-2)
    importance = torch.zeros(spec.shape)
    negatives = torch.zeros(spec.shape)
    with _frozen(model), scale_heads(model, m):
        for text in TEXTS:
            x = tok(text, return_tensors="pt")["input_ids"]
            model(input_ids=x, labels=x).loss.backward()
            importance += 1000 * m.grad.abs() * m.detach()
            negatives += (m.grad * m.detach() < 0).float()
            opt.step()
            opt.zero_grad()
    s = score_heads(model, tok, TEXTS, mode="faithful", progress=False)
    n = len(TEXTS)
    torch.testing.assert_close(s.importance, importance / n, rtol=1e-4, atol=1e-6)
    assert torch.equal(s.negative_fraction, negatives / n)
    torch.testing.assert_close(s.scores, importance / n * (negatives / n), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(s.extra["final_m"]), m.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(m.detach(), torch.ones(spec.shape))  # the online updates really happened


def test_faithful_without_updates_equals_fast(tok):
    model = tiny_model("mistral")
    fast = score_heads(model, tok, TEXTS, mode="fast", batch_size=4, progress=False)
    frozen_m = score_heads(model, tok, TEXTS, mode="faithful", lr=0.0, progress=False)
    torch.testing.assert_close(fast.scores, frozen_m.scores, rtol=1e-4, atol=1e-6)


def test_bfloat16_mask_option_runs_like_the_reference(tok):
    model = tiny_model("llama")
    s = score_heads(model, tok, TEXTS[:3], mode="faithful", mask_dtype="bfloat16", progress=False)
    f = score_heads(model, tok, TEXTS[:3], mode="faithful", progress=False)
    assert s.extra["mask_dtype"] == "bfloat16" and s.scores.dtype == torch.float32
    torch.testing.assert_close(s.importance, f.importance, rtol=3e-2, atol=1e-3)  # bf16 accuracy, not exact


@pytest.mark.parametrize("mode", ["fast", "faithful"])
def test_bfloat16_model_scores_close_to_float32(tok, mode):
    exact = score_heads(tiny_model("gemma3"), tok, TEXTS[:4], mode=mode, progress=False)
    bf16 = score_heads(tiny_model("gemma3", dtype=torch.bfloat16), tok, TEXTS[:4], mode=mode, progress=False)
    assert bf16.extra["dtype"] == "torch.bfloat16"
    scale = exact.importance.abs().max()
    assert (bf16.importance - exact.importance).abs().max() < 0.05 * scale  # bf16 has an 8-bit mantissa


def test_model_weights_and_grad_flags_are_untouched(tok):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    score_heads(model, tok, TEXTS[:3], mode="faithful", progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and not model.training


# ---------------------------------------------------------------------------- chunked loss


@pytest.mark.parametrize("arch,setup", [("gemma3", "softcap"), ("cohere", None), ("llama", None), ("gpt2", None)])
def test_chunked_loss_equals_the_models_own_loss(tok, arch, setup):
    model = tiny_model(arch)
    if setup == "softcap":
        model.config.final_logit_softcapping = 0.05  # tiny logits are ~0.1: a small cap so tanh really bends them
    spec = describe(model)
    batch = tok(TEXTS[:4], return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert tok.padding_side == "right"
    with torch.no_grad():
        losses, counts = sequence_losses(model, ids, mask, loss_chunk=4)
        for i in range(4):
            n = int(mask[i].sum())
            own = model(input_ids=ids[i:i + 1, :n], labels=ids[i:i + 1, :n]).loss
            assert losses[i].item() == pytest.approx(own.item(), rel=1e-5)
            assert counts[i] == n - 1
    if setup == "softcap":  # the cap matters: without it the loss differs
        with torch.no_grad():
            model.config.final_logit_softcapping = None
            uncapped = model(input_ids=ids[:1, :int(mask[0].sum())], labels=ids[:1, :int(mask[0].sum())]).loss
        assert abs(uncapped.item() - losses[0].item()) > 1e-3
        model.config.final_logit_softcapping = 0.05
    # gradients through the chunked head (fused backward) equal the model's own
    m = torch.ones(spec.shape, requires_grad=True)
    n = int(mask[0].sum())
    with _frozen(model), scale_heads(model, m):
        sequence_losses(model, ids[:1, :n], mask[:1, :n], loss_chunk=3)[0].sum().backward()
    _, g = own_loss_grad(model, tok, TEXTS[0], torch.ones(spec.shape))
    torch.testing.assert_close(m.grad, g, rtol=1e-4, atol=1e-7)


def test_chunked_loss_check_catches_unknown_logit_transforms(tok):
    from lahis_ctrl.lahis.scoring import check_loss_matches

    model = tiny_model("llama")
    ids = tok(TEXTS[0])["input_ids"]
    check_loss_matches(model, ids)  # passes
    original = model.forward

    def scaled_forward(*a, **kw):  # a model whose forward rescales logits in a way lahis_ctrl cannot know
        out = original(*a, **{k: v for k, v in kw.items() if k != "labels"})
        labels = kw["labels"]
        logits = out.logits * 2.0
        out.loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:])
        return out

    model.forward = scaled_forward
    with pytest.raises(LahisError, match="differs from"):
        check_loss_matches(model, ids)


# ---------------------------------------------------------------------------- resumption


from tiny import Interrupt, interrupt_after as _interrupt_after  # noqa: E402


@pytest.mark.parametrize("mode", ["faithful", "fast"])
def test_resumed_equals_uninterrupted(tok, tmp_path, mode):
    model = tiny_model("llama")
    kw = dict(mode=mode, batch_size=2, progress=False, check_loss=False)
    full = score_heads(model, tok, TEXTS, **kw)
    ckpt = tmp_path / "en.ckpt.safetensors"
    restore = _interrupt_after(model, 3)
    with pytest.raises(Interrupt):
        score_heads(model, tok, TEXTS, checkpoint=ckpt, checkpoint_every=1, **kw)
    restore()
    assert ckpt.is_file()
    state = json.loads(__import__("safetensors").safe_open(str(ckpt), "pt").metadata()["state"])
    assert state["done_batches"] == 3
    resumed = score_heads(model, tok, TEXTS, checkpoint=ckpt, checkpoint_every=1, **kw)
    assert torch.equal(resumed.scores, full.scores)
    assert torch.equal(resumed.importance, full.importance)
    assert resumed.num_tokens == full.num_tokens
    if mode == "faithful":
        assert resumed.extra["final_m"] == full.extra["final_m"]
    # a checkpoint from other settings is refused, not silently mixed in
    with pytest.raises(LahisError, match="other texts or settings"):
        score_heads(model, tok, TEXTS[:-1], checkpoint=ckpt, **kw)


# ---------------------------------------------------------------------------- files


def test_scores_file_roundtrip_and_validate(tok, tmp_path):
    model = tiny_model("gemma3")
    s = score_heads(model, tok, TEXTS[:3], mode="fast", language="en", source="embedded", progress=False)
    path = s.save(tmp_path / "en.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == {"scores", "importance", "negative_fraction"}
    assert json.loads(meta["mode"]) == "fast" and json.loads(meta["language"]) == "en"
    assert json.loads(meta["num_texts"]) == 3 and json.loads(meta["source"]) == "embedded"
    assert meta["lahis_ctrl_version"] and json.loads(meta["model_type"]) == "gemma3_text"
    back = HeadScores.load(path)
    assert torch.equal(back.scores, s.scores) and back.facts() == s.facts()
    back.validate(model)
    with pytest.raises(MaskMismatchError, match="scores for"):
        back.validate(tiny_model("llama"))
    with pytest.raises(LahisError, match="not found"):
        HeadScores.load(tmp_path / "missing.safetensors")
    with pytest.raises(LahisError, match=".safetensors"):
        s.save(tmp_path / "en.pt")


def test_top_heads_sorted_by_score():
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.9, 0.0, 0.5]])
    s = HeadScores(scores, scores, torch.ones_like(scores), model_type="llama", head_dim=4)
    assert s.top_heads(4) == [(0, 1), (1, 0), (1, 2), (0, 2)]  # tie 0.9: lower layer first
    assert len(s.top_heads(100)) == 6


# ---------------------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors(tok):
    model = tiny_model("llama")
    with pytest.raises(LahisError, match="corpus is empty"):
        score_heads(model, tok, [], progress=False)
    with pytest.raises(LahisError, match="fewer than 2 tokens"):
        score_heads(model, tok, ["fine text here", "a"], progress=False)
    with pytest.raises(LahisError, match="max_length must be at least 2"):
        score_heads(model, tok, TEXTS, max_length=1, progress=False)
    with pytest.raises(LahisError, match="unknown scoring mode"):
        score_heads(model, tok, TEXTS, mode="slowest", progress=False)
    with pytest.raises(LahisError, match="not one string"):
        score_heads(model, tok, "one string", progress=False)
    with pytest.raises(LahisError, match="no embedded passages for language 'xx'"):
        load_texts("embedded", "xx")
    with pytest.raises(LahisError, match="not a language code"):
        load_texts("embedded", "English!")


# ---------------------------------------------------------------------------- corpora


def test_embedded_passages_cover_many_languages():
    langs = embedded_languages()
    assert len(langs) >= 8 and set(EMBEDDED_LANGUAGES) == set(langs)
    for lang in langs:
        texts = load_texts("embedded", lang, seed=None)
        assert len(texts) >= 5 and all(len(t) > 80 for t in texts)
    # the same six topics in every language, unshuffled order is the file's
    assert load_texts("embedded", "en", seed=None)[2].startswith("The printing press")
    assert sorted(load_texts("embedded", "en", seed=3)) == sorted(load_texts("embedded", "en", seed=None))
    assert load_texts("embedded", "en", n=2, seed=None) == load_texts("embedded", "en", seed=None)[:2]


def test_local_txt_jsonl_and_errors(tmp_path):
    (tmp_path / "blocks.txt").write_text("first line\nstill first\n\nsecond\n\n\nthird\n", encoding="utf-8")
    assert load_texts(tmp_path / "blocks.txt", "en", seed=None) == ["first line still first", "second", "third"]
    (tmp_path / "lines.txt").write_text("one\ntwo\n\nthree\n".replace("\n\n", "\n"), encoding="utf-8")
    assert load_texts(tmp_path / "lines.txt", "en", seed=None) == ["one", "two", "three"]
    (tmp_path / "de.jsonl").write_text('{"text": "Hallo Welt"}\n\n{"text": "Zweiter Text", "id": 2}\n', encoding="utf-8")
    assert load_texts(tmp_path / "{lang}.jsonl", "de", seed=None) == ["Hallo Welt", "Zweiter Text"]
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(LahisError, match="no string field 'text'"):
        load_texts(tmp_path / "bad.jsonl", "en")
    with pytest.raises(LahisError, match="not found"):
        load_texts(tmp_path / "nope.txt", "en")
    with pytest.raises(LahisError, match="no text for language 'fr'"):
        load_texts(tmp_path, "fr")
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(LahisError, match="no texts"):
        load_texts(tmp_path / "empty.txt", "en")


def test_ntrex_layout_joins_consecutive_lines(shared_data):
    from transformers import AutoTokenizer  # noqa: F401  (the tiny tokenizer counts tokens)
    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    root = shared_data / "ntrex128"
    lines = (root / "en.txt").read_text(encoding="utf-8").splitlines()
    texts = load_texts(root, "en", seed=None, tokenizer=tok, passage_tokens=200)
    assert texts[0].startswith(lines[0]) and lines[1] in texts[0]
    assert " ".join(texts) == " ".join(l.strip() for l in lines if l.strip())
    sizes = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts[:-1]]
    assert min(sizes) >= 200 and sum(sizes) / len(sizes) < 400
    zh = load_texts(root, "zh", n=3, seed=None, passage_tokens=100)
    zh_lines = (root / "zh.txt").read_text(encoding="utf-8").splitlines()
    assert len(zh) == 3 and zh[0].startswith(zh_lines[0] + zh_lines[1])  # CJK sentences: joined without spaces
    with pytest.raises(LahisError, match="languages there:"):
        load_texts(root, "xx")


def test_wikipedia_streams_the_hub_dataset(monkeypatch):
    import datasets

    calls = {}

    def fake_load_dataset(path, name, split, streaming):
        calls.update(path=path, name=name, split=split, streaming=streaming)
        return ({"text": f"article {i}"} if i != 2 else {"text": ""} for i in range(10**6))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    texts = load_texts("wikipedia", "vi", n=5, seed=1)
    assert calls == {"path": "wikimedia/wikipedia", "name": "20231101.vi", "split": "train", "streaming": True}
    assert sorted(texts) == sorted(["article 0", "article 1", "article 3", "article 4", "article 5"])
    assert texts != sorted(texts, key=lambda t: int(t.split()[1]))  # shuffled with the seed
    assert load_texts("wikipedia", "vi", n=5, seed=1) == texts


def test_join_lines_estimates_without_tokenizer():
    lines = ["word " * 30] * 10
    passages = join_lines(lines, passage_tokens=80)
    assert 1 < len(passages) < 10 and sum(p.count("word") for p in passages) == 300


# ---------------------------------------------------------------------------- classification


def _matrix(top: dict[tuple[int, int], float], shape=(5, 5)) -> torch.Tensor:
    t = torch.arange(shape[0] * shape[1], dtype=torch.float32).reshape(shape) * 1e-3  # distinct small values
    for (l, h), v in top.items():
        t[l, h] = v
    return t


def test_classify_hand_made_matrices():
    # 25 heads, q=0.92 keeps the top 2 of each language (above the 0.9 quantile)
    scores = {
        "en": _matrix({(0, 0): 9, (1, 1): 8}),
        "zh": _matrix({(0, 0): 9, (2, 2): 8}),
        "hi": _matrix({(0, 0): 7, (3, 3): 9}),
    }
    c = classify_heads(scores, q=0.92, min_rep=3)
    assert c["general"] == [{"layer": 0, "head": 0, "languages": ["en", "zh", "hi"]}]
    assert [(s["layer"], s["head"]) for s in c["per_language"]["en"]["specific"]] == [(1, 1)]
    assert [(s["layer"], s["head"]) for s in c["per_language"]["hi"]["specific"]] == [(3, 3)]
    assert [(k["layer"], k["head"]) for k in c["per_language"]["hi"]["kept"]] == [(3, 3), (0, 0)]
    assert HeadClassification.from_json(json.loads(json.dumps(c.to_json()))) == c  # JSON round trip
    from lahis_ctrl.lahis.heads import format_classification

    text = format_classification(c)
    assert "general: L0H0 (en/zh/hi)" in text and "en: specific: L1H1 (8)" in text
    c2 = classify_heads(scores, q=0.92, min_rep=2)
    assert c2["general"] == c["general"]
    c4 = classify_heads({**scores, "vi": _matrix({(1, 1): 9, (4, 4): 8})}, q=0.92, min_rep=2)
    assert [(g["layer"], g["head"]) for g in c4["general"]] == [(0, 0), (1, 1)]
    assert c4["per_language"]["en"]["specific"] == []
    assert [(s["layer"], s["head"]) for s in c4["per_language"]["vi"]["specific"]] == [(4, 4)]
    # default min_rep: the reference's 4 of 5, generalised
    assert [default_min_rep(n) for n in (2, 3, 5, 8)] == [2, 3, 4, 7]
    assert classify_heads(scores, q=0.92)["min_rep"] == 3
    # ranked specific heads go past the quantile when asked for more
    assert top_specific_heads(scores, "en", 3, q=0.92, min_rep=3) == [(1, 1), (4, 4), (4, 3)]


def test_classify_rejects_mixed_models_and_bad_rules():
    with pytest.raises(MaskMismatchError, match="different shapes"):
        classify_heads({"en": torch.rand(4, 4), "zh": torch.rand(3, 4)})
    with pytest.raises(LahisError, match="only 2 languages"):
        classify_heads({"en": torch.rand(4, 4), "zh": torch.rand(4, 4)}, min_rep=3)
    one = classify_heads({"en": _matrix({(1, 1): 9})}, q=0.95)  # one language: nothing can be general
    assert one["general"] == [] and one["per_language"]["en"]["specific"][0]["layer"] == 1
    with pytest.raises(LahisError, match="q must be"):
        classify_heads({"en": torch.rand(4, 4)}, q=1.5)
    with pytest.raises(LahisError, match="no languages"):
        classify_heads({})
    a = HeadScores(torch.rand(3, 4), torch.rand(3, 4), torch.rand(3, 4), model_type="llama", head_dim=16, language="en")
    b = HeadScores(torch.rand(3, 4), torch.rand(3, 4), torch.rand(3, 4), model_type="qwen2", head_dim=16, language="zh")
    with pytest.raises(MaskMismatchError, match="different models"):
        classify_heads({"en": a, "zh": b})


# ---------------------------------------------------------------------------- perplexity probes


def test_perplexity_matches_the_models_own_loss(tok):
    model = tiny_model("gemma3")
    losses, counts = text_losses(model, tok, TEXTS, batch_size=3)
    for i, text in enumerate(TEXTS):
        x = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            assert losses[i].item() == pytest.approx(model(input_ids=x, labels=x).loss.item(), rel=1e-5)
        assert counts[i] == x.shape[1] - 1
    p = summarize(losses, counts)
    assert p["corpus_ppl"] == pytest.approx(math.exp(float((losses * counts).sum() / counts.sum())), rel=1e-6)
    assert p["mean_text_ppl"] == pytest.approx(float(losses.exp().mean()), rel=1e-6)


def test_ppl_cross_masks_each_languages_heads(tok):
    model = tiny_model("llama")
    spec = describe(model)
    texts = {"en": TEXTS[:2], "es": TEXTS[3:5]}
    scores = {"en": _matrix({(0, 1): 5, (2, 3): 4}, spec.shape), "es": _matrix({(1, 2): 5, (2, 3): 4}, spec.shape)}
    r = ppl_cross(model, tok, texts, scores, k=2, random_trials=2, seed=0, q=0.8, min_rep=2, progress=False)
    # (2, 3) is kept by both languages: general, so never among the specific heads
    assert r["heads"]["en"][0] == [0, 1] and [2, 3] not in r["heads"]["en"] and len(r["heads"]["en"]) == 2
    mask = HeadMask.from_heads(spec, [tuple(h) for h in r["heads"]["es"]], 0.0)
    assert r["masked"]["es"]["en"]["corpus_ppl"] == pytest.approx(
        perplexity(model, tok, texts["en"], mask=mask)["corpus_ppl"], rel=1e-6)
    assert r["masked"]["es"]["en"]["corpus_ppl"] != r["baseline"]["en"]["corpus_ppl"]
    assert r["baseline"]["es"] == {**perplexity(model, tok, texts["es"]), "masked_by": "none"}
    assert len(r["random"]["en"]["trials"]) == 2
    json.dumps(r)
    from lahis_ctrl.eval.ppl import format_table

    table = format_table(r)
    assert table.count("\n") == 3 and "random 2" in table


# ---------------------------------------------------------------------------- plots, CLI


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(tmp_path):
    from lahis_ctrl.eval.plots import plot_heatmaps, plot_layer_distribution, plot_overlap, overlap_matrix

    scores = {"en": _matrix({(0, 0): 9, (1, 1): 8}), "zh": _matrix({(0, 0): 9, (2, 2): 8})}
    langs, m, _ = overlap_matrix(scores, top=2)
    assert m.tolist() == [[2, 1], [1, 2]]
    for p in (plot_heatmaps(scores, tmp_path / "h.png"), plot_overlap(scores, tmp_path / "o.png", top=2),
              plot_layer_distribution(classify_heads(scores, q=0.9), tmp_path / "l.png")):
        assert _is_png(p)
    with pytest.raises(LahisError, match="PNG"):
        plot_heatmaps(scores, tmp_path / "h.pdf")


def test_cli_score_heads_plot_ppl(tmp_path, capsys):
    from lahis_ctrl.cli import main
    from tiny import save_tiny

    model_dir = save_tiny(tmp_path / "tiny", "llama")
    out = tmp_path / "scores"
    common = ["--model", str(model_dir), "--source", "embedded", "--max_length", "24", "--texts", "3", "--out", str(out)]
    assert main(["score", "--languages", "[en, es]", *common]) == 0
    files = [out / "en.safetensors", out / "es.safetensors"]
    assert all(f.is_file() for f in files) and not list(out.glob("*.ckpt.*"))
    first = HeadScores.load(files[0])
    assert first.language == "en" and first.num_texts == 3 and first.source == "embedded"
    assert main(["score", "--languages", "[en]", *common]) == 0  # already scored: loaded, not recomputed
    assert HeadScores.load(files[0]).scores.equal(first.scores)
    assert main(["heads", str(out), "--q", "0.8", "--out", str(tmp_path / "heads.json")]) == 0
    c = json.loads((tmp_path / "heads.json").read_text())
    assert c["languages"] == ["en", "es"] and c["min_rep"] == 2
    assert main(["plot", f"{files[0]},{files[1]}", "--out", str(tmp_path / "plots")]) == 0
    assert all(_is_png(tmp_path / "plots" / n) for n in ("heatmaps.png", "overlap.png", "layers.png"))
    assert main(["ppl", str(out / "*.safetensors"), "--model", str(model_dir), "--texts", "2", "--k", "2", "--max_length", "16",
                 "--random_trials", "1", "--out", str(tmp_path / "ppl")]) == 0
    assert _is_png(tmp_path / "ppl" / "ppl_cross.png")
    assert "mean per-text exp(loss)" in (tmp_path / "ppl" / "ppl_cross.md").read_text()
    capsys.readouterr()
    assert main(["score", "--languages", "[xx]", *common]) == 2
    assert "no embedded passages for language 'xx'" in capsys.readouterr().err


def test_score_languages_helper_saves_and_reuses(tok, tmp_path):
    model = tiny_model("gemma3")
    res = score_languages(model, tok, ["en", "hi"], n=2, max_length=16, out_dir=tmp_path, progress=False)
    assert set(res) == {"en", "hi"} and res["hi"].language == "hi"
    again = score_languages(model, tok, ["en"], n=2, max_length=16, out_dir=tmp_path, progress=False)
    assert torch.equal(again["en"].scores, res["en"].scores)
    with pytest.raises(LahisError, match="other settings"):  # never silently reuse scores of other settings
        score_languages(model, tok, ["en"], n=3, max_length=16, out_dir=tmp_path, progress=False)
    # --overwrite that crashes half-way leaves the finished file of the earlier run as it was
    before = (tmp_path / "en.safetensors").read_bytes()
    restore = _interrupt_after(model, 0)
    with pytest.raises(Interrupt):
        score_languages(model, tok, ["en"], n=3, max_length=16, out_dir=tmp_path, progress=False, overwrite=True,
                        check_loss=False)
    restore()
    assert (tmp_path / "en.safetensors").read_bytes() == before
    redone = score_languages(model, tok, ["en"], n=3, max_length=16, out_dir=tmp_path, progress=False,
                             overwrite=True)
    assert redone["en"].num_texts == 3 and HeadScores.load(tmp_path / "en.safetensors").num_texts == 3


def test_gradient_checkpointing_gives_the_same_scores(tok):
    model = tiny_model("llama")
    from lahis_ctrl.core.architecture import output_projections

    calls = []
    hook = output_projections(model)[0].register_forward_hook(lambda *a: calls.append(1))
    plain = score_heads(model, tok, TEXTS[:4], mode="fast", batch_size=2, progress=False, check_loss=False)
    n_plain = len(calls)
    ckpt = score_heads(model, tok, TEXTS[:4], mode="fast", batch_size=2, gradient_checkpointing=True, progress=False,
                       check_loss=False)
    hook.remove()
    assert n_plain == 2 and len(calls) - n_plain == 4  # the layers really were recomputed in backward
    torch.testing.assert_close(ckpt.scores, plain.scores, rtol=1e-5, atol=1e-7)
    assert not model.training and not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


# ---------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_gemma_zeroing_top_heads_hurts_their_language_more_than_random(gemma, shared_data):
    """Gemma 3 270M, NTREX-128: zeroing X's top-k LAHIS heads raises X's perplexity more than k random heads."""
    model, tok = gemma
    root = shared_data / "ntrex128"
    lang, k = "en", 3
    score_texts = load_texts(root, lang, n=6, seed=None, tokenizer=tok, passage_tokens=128)
    scores = score_heads(model, tok, score_texts, mode="fast", max_length=128, batch_size=6, language=lang,
                         progress=False)
    # held-out texts: passages after the scored ones
    eval_texts = load_texts(root, lang, n=12, seed=None, tokenizer=tok, passage_tokens=128)[6:]
    spec = describe(model)
    base = perplexity(model, tok, eval_texts, max_length=128, batch_size=6)
    top = perplexity(model, tok, eval_texts, mask=HeadMask.from_heads(spec, scores.top_heads(k), 0.0),
                     max_length=128, batch_size=6)
    rng = random.Random(0)
    from lahis_ctrl.eval.ppl import random_heads

    rand = [perplexity(model, tok, eval_texts, mask=HeadMask.from_heads(spec, random_heads(*spec.shape, k, rng), 0.0),
                       max_length=128, batch_size=6) for _ in range(3)]
    rand_mean = sum(r["corpus_ppl"] for r in rand) / len(rand)
    print(f"\n[gemma ppl {lang}] top-{k} heads {scores.top_heads(k)}: base {base['corpus_ppl']:.2f}, "
          f"top-{k} zeroed {top['corpus_ppl']:.2f}, random {k} zeroed {[round(r['corpus_ppl'], 2) for r in rand]} "
          f"(mean {rand_mean:.2f}); mean per-text ppl base {base['mean_text_ppl']:.2f} top {top['mean_text_ppl']:.2f}")
    assert top["corpus_ppl"] > base["corpus_ppl"]
    assert top["corpus_ppl"] > rand_mean


def test_ntrex_source_downloads_the_named_file_and_joins_passages(monkeypatch, tok):
    """source='ntrex' reads NTREX-128 from its GitHub URL (the hub-free default of `lahis reproduce`)."""
    import datasets

    from lahis_ctrl.corpora.texts import NTREX_URL, check_source, load_texts

    seen = []

    def fake_load_dataset(kind, data_files, split):
        seen.append(data_files["test"])
        return {"text": [f"Satz Nummer {i} über das Wetter." for i in range(40)]}

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    texts = load_texts("ntrex", "de", seed=None, tokenizer=tok, passage_tokens=32)
    assert seen == [NTREX_URL.format(code="deu")]
    assert len(texts) > 1 and texts[0].startswith("Satz Nummer 0 über das Wetter. Satz Nummer 1")
    with pytest.raises(LahisError, match="no NTREX-128 text for language 'xx'"):
        check_source("ntrex", "xx")
