"""QA metrics: the paper's substring accuracy, SQuAD v1.1 exact match and F1."""

import pytest

from lahis_ctrl.eval.qa_metrics import contains, exact_match, f1, normalize_answer, score_all

# SQuAD v1.1 dev, "Where did Super Bowl 50 take place?" (id 56be4db0acb8001400a502ee): the official golds
SB50 = ["Santa Clara, California", "Levi's Stadium", "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California."]


def test_normalize_answer_follows_squad_v11():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear and the fig.") == "apple pear and fig"
    assert normalize_answer("Levi's Stadium") == "levis stadium"
    # articles only as whole words: "theory" and "Anaheim" keep their letters
    assert normalize_answer("theory of Anaheim") == "theory of anaheim"
    # non-English: Unicode lowercasing, ASCII punctuation only, no foreign articles
    assert normalize_answer("Die Königin!") == "die königin"
    assert normalize_answer("北京。") == "北京。"
    assert normalize_answer("ΑΘΉΝΑ") == "αθήνα"


def test_exact_match_on_official_examples():
    assert exact_match("Levi's Stadium", SB50) == 1.0
    assert exact_match("levis stadium.", SB50) == 1.0
    assert exact_match("Santa Clara", SB50) == 0.0
    assert exact_match("Denver Broncos", ["Denver Broncos", "Denver Broncos", "Denver Broncos"]) == 1.0
    assert exact_match("the Denver Broncos", "Denver Broncos") == 1.0
    assert exact_match("", ["x"]) == 0.0


def test_f1_on_official_examples():
    # vs "Santa Clara, California": P = 2/2, R = 2/3 -> 0.8 (the max over golds)
    assert f1("Santa Clara", SB50) == pytest.approx(0.8)
    # vs the long gold: 11 tokens after normalisation, 3 shared: P = 1, R = 3/11 -> 6/14; but the first gold gives 1.0
    assert f1("Santa Clara, California", SB50) == 1.0
    assert f1("Santa Clara, California", [SB50[2]]) == pytest.approx(6 / 14)
    assert f1("Broncos", "Denver Broncos") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert f1("Carolina Panthers", "Denver Broncos") == 0.0
    # repeated tokens count once per occurrence in both (Counter intersection)
    assert f1("the the cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    # Chinese has no spaces: one token, so F1 collapses to exact match
    assert f1("北京是首都", "北京") == 0.0
    assert f1("北京", ["北京"]) == 1.0


def test_contains_is_the_papers_accuracy():
    assert contains(" It was in Paris, France", ["paris"]) == 1.0
    assert contains("PARIS", ["Paris"]) == 1.0  # lowercased both sides
    assert contains("the answer is 1911", ["1911."]) == 1.0  # a trailing '.' of the gold is dropped
    assert contains("the answer is 1911", ["1911.."]) == 0.0  # only one
    assert contains("Paris", ["Lyon", "paris"]) == 1.0  # any gold
    assert contains("Par is", ["Paris"]) == 0.0
    assert contains("", ["Paris"]) == 0.0
    assert contains("anything", [""]) == 0.0  # an empty gold never matches
    assert contains("Die Königin legt Eier", ["die königin"]) == 1.0


def test_answer_in_prompt_but_not_in_continuation_is_wrong():
    prompt = "[Context]Marie Curie was born in Warsaw.[Question]Where was she born?[Answer]"
    continuation = " I do not know"
    assert contains(prompt + continuation, ["Warsaw"]) == 1.0  # what string-stripping a prompt gets wrong
    assert contains(continuation, ["Warsaw"]) == 0.0


def test_score_all_keys_and_ranges():
    s = score_all("Santa Clara", SB50)
    assert set(s) == {"accuracy", "exact_match", "f1"}
    assert s == {"accuracy": 0.0, "exact_match": 0.0, "f1": pytest.approx(0.8)}  # no gold is a substring
    assert score_all("at Santa Clara, California", SB50)["accuracy"] == 1.0
