"""The LM-likelihood core against the model's own numbers, on every tiny architecture (Gemma softcapping,
Cohere logit_scale, Granite's logits_scaling and multipliers included): per-text losses, the answer-only
loss, continuation log-probs; padding changes nothing; one pad-id rule; tokenizers are never modified."""

import copy

import pytest
import torch
from tiny import ALL_ARCHS, tiny_model

from lahis_ctrl.core.lm import (IGNORE, answer_loss, continuation_logprobs, greedy_generate, pad_batch, pad_id,
                                sequence_losses, token_nll)

ROWS = [[5, 17, 42, 99, 7, 3, 250, 11], [8, 9, 10], [300, 301, 302, 303, 304]]


@pytest.fixture(scope="module", params=ALL_ARCHS)
def model(request):
    return tiny_model(request.param)


def _own_loss(model, ids, labels=None):
    x = torch.tensor([ids])
    with torch.no_grad():
        return model(input_ids=x, labels=x if labels is None else torch.tensor([labels])).loss.item()


def test_sequence_losses_equal_the_models_own_loss_row_by_row(model):
    ids, mask = pad_batch(ROWS, 0)
    with torch.no_grad():
        losses, counts = sequence_losses(model, ids, mask)
    assert counts.tolist() == [len(r) - 1 for r in ROWS]
    for r, row in enumerate(ROWS):
        assert losses[r].item() == pytest.approx(_own_loss(model, row), rel=1e-5, abs=1e-5)


def test_answer_loss_equals_the_models_loss_with_the_same_labels(model):
    ids = ROWS[0]
    labels = [IGNORE] * 5 + ids[5:]  # the last three tokens are "the answer"
    batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "attention_mask": torch.ones(1, 8)}
    with torch.no_grad():
        assert answer_loss(model, batch).item() == pytest.approx(_own_loss(model, ids, labels), rel=1e-5, abs=1e-5)
    # right padding and a second row: the answer tokens of both, padding excluded
    padded, attn = pad_batch([ids, ROWS[2]], 0)
    lab, _ = pad_batch([labels, [IGNORE, IGNORE] + ROWS[2][2:]], IGNORE)
    with torch.no_grad():
        both = answer_loss(model, {"input_ids": padded, "labels": lab, "attention_mask": attn}).item()
        nll_a = _own_loss(model, ids, labels) * 3
        nll_b = _own_loss(model, ROWS[2], [IGNORE, IGNORE] + ROWS[2][2:]) * 3
    assert both == pytest.approx((nll_a + nll_b) / 6, rel=1e-5, abs=1e-5)


def test_continuation_logprobs_equal_a_full_log_softmax(model, tok):
    prompts, conts = ["The quick brown fox", "Paris is the"], [" jumps over", " capital of France"]
    got = continuation_logprobs(model, tok, prompts, conts, batch_size=2)
    for prompt, cont, value in zip(prompts, conts, got):
        p = tok(prompt)["input_ids"]
        full = tok(prompt + cont)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full])).logits.float()[0], -1)
        want = sum(logp[t - 1, full[t]].item() for t in range(len(p), len(full)))
        assert value == pytest.approx(want, rel=1e-5, abs=1e-4)


def test_token_nll_needs_a_token_to_score(model):
    ids, mask = pad_batch([[5]], 0)
    with pytest.raises(Exception, match="no token to score"):
        token_nll(model, ids, mask)


def test_pad_id_rule_and_tokenizers_are_not_modified(tok):
    class Tok:
        pad_token_id, eos_token_id, bos_token_id = None, None, 7

    assert pad_id(Tok()) == 7
    Tok.bos_token_id = None
    assert pad_id(Tok()) == 0
    no_pad = copy.deepcopy(tok)
    no_pad.pad_token = None
    assert no_pad.pad_token_id is None and pad_id(no_pad) == tok.eos_token_id
    model = tiny_model("llama")
    side = no_pad.padding_side
    out = greedy_generate(model, no_pad, ["The quick brown fox", "Paris"], max_new_tokens=3, batch_size=2)
    assert no_pad.pad_token is None and no_pad.padding_side == side  # untouched
    # left padding gives each prompt the continuation it gets alone
    assert out == [greedy_generate(model, no_pad, [p], max_new_tokens=3)[0] for p in ["The quick brown fox", "Paris"]]


def test_pad_batch_sides():
    ids, mask = pad_batch([[1, 2, 3], [4]], 0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[1, 2, 3], [4]], 9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
