"""The settings of `lahis reproduce`: one dataclass per section of its YAML config.

Every claim about "more heads than random heads" is tested with the head set as its unit (findings.py): a count of
random draws of `auto` is the fewest draws that let the smallest reachable p of that claim's test be at most
AUTO_MIN_P (0.001) before Holm's correction, for the configured languages or pairs (`planned_draws`). A count set by
hand whose test cannot reach alpha / (number of findings), the level Holm's first step needs, is refused up front
unless `allow_underpowered: true`; the report then labels those findings "underpowered by design".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from ...core.argtypes import (MaxLength, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Quantile,
                              Shots)

STEPS = ("scores", "ppl", "xquad", "off_target", "transfer", "lcb")
AUTO_MIN_P = 0.001
# a number of random head sets, or "auto" (the fewest that reach AUTO_MIN_P; see planned_draws)
Draws = Union[PositiveInt, Literal["auto"]]


@dataclass
class ScoringSettings:
    """Step 1: LAHIS scores.

    Args:
        languages: languages to score (8 or more for the report's classification).
        source: "ntrex" (NTREX-128: <data>/ntrex128 with --data, else downloaded), "wikipedia" (the
            reference's corpus, hub), "embedded", or a local path (see lahis_ctrl.corpora).
        texts: passages per language (the reference: 1000 Wikipedia articles).
        max_length: tokens per passage (the reference: 2048).
        mode: "fast" (batched, m fixed at 1) or "faithful" (the reference's online AdamW updates).
        batch_size: texts per backward pass in fast mode.
        q: quantile above which a head is kept for a language (the reference: 0.96).
        min_rep: languages that must keep a head for it to be language-general (default: see heads.py).
    """

    languages: list[str] = field(default_factory=lambda: ["en", "de", "es", "hi", "ru", "zh", "vi", "ar"])
    source: str = "ntrex"
    texts: PositiveInt = 20
    max_length: MaxLength = 256
    mode: Literal["fast", "faithful"] = "fast"
    batch_size: PositiveInt = 4
    q: Quantile = 0.96
    min_rep: Optional[PositiveInt] = None


@dataclass
class PplSettings:
    """Step 2: the perplexity matrix.

    Args:
        languages: text languages X (default: every scored language); columns Y are all scored languages.
        texts: held-out passages per language (taken after the scored ones, never the same text).
        k: heads zeroed per language (its k strictly specific heads: heads.STRICT_RULE) and per random draw.
        random_trials: draws of k random heads per language (from the heads outside its own set): the own heads'
            increase is ranked among the draws', per language, and the ranks are combined exactly; "auto" = the
            fewest that reach p <= 0.001. One more set per language is the placebo.
        max_length: tokens per passage.
        batch_size: passages per forward pass.
    """

    languages: Optional[list[str]] = None
    texts: PositiveInt = 8
    k: PositiveInt = 3
    random_trials: Draws = "auto"
    max_length: MaxLength = 256
    batch_size: PositiveInt = 4


@dataclass
class XquadSettings:
    """Step 3: soft head masks on XQuAD.

    Args:
        languages: XQuAD languages (each must be scored in step 1; default: the scored XQuAD languages but en).
        heads: trainable heads per mask; default max(4, 2% of all heads) (the reference: 2%).
        train_items: items of the reference train split (items [0:390], 200 shuffled with seed 68); null = all 200
            (the reference's budget: 200 items x 2 epochs at batch 1).
        test_items: first items of the held-out test split (items [390:1190]); null = all 800.
        epochs: training epochs (the reference: 2).
        lr: AdamW learning rate (the reference: 1e-2).
        seeds: training seeds of the LAHIS mask per language (seed s trains on the train items in the order of
            seed s; seed 0 is the reference's order): the XQuAD gain's interval covers seeds and items.
        random_masks: random-heads soft masks per language (heads drawn outside the LAHIS heads, each trained once):
            the LAHIS mask's gain is ranked among theirs; "auto" = the fewest that reach p <= 0.001. One more is
            the placebo.
        max_new_tokens: greedy tokens generated per answer (the reference: 10).
        batch_size: prompts per generate call.
    """

    languages: Optional[list[str]] = None
    heads: Optional[PositiveInt] = None
    train_items: Optional[PositiveInt] = None
    test_items: Optional[PositiveInt] = None
    epochs: PositiveInt = 2
    lr: PositiveFloat = 1e-2
    seeds: PositiveInt = 3
    random_masks: Draws = "auto"
    max_new_tokens: PositiveInt = 10
    batch_size: PositiveInt = 8


@dataclass
class OffTargetSettings:
    """Step 4: off-target language rates through lm-eval.

    Args:
        languages: target languages T (scored in step 1; tasks xquad_xling_<T> and ntrex_en_<T>; default: the
            scored languages but the source language).
        source_lang: the other language of the prompt (xquad_xling's context, the translation's source).
        tasks: task families run per language: "xquad_xling" and/or "ntrex_en".
        heads: heads per intervention (default max(1, 1% of all heads) as in the paper, at least 2).
        scale_up: the factor of the "scale T's heads up" intervention.
        random_draws: random head sets for each "more than random heads" claim: zeroed (one set for all target
            languages, like the source language's heads) and scaled up (per target language). They are measured by
            a teacher-forced proxy on every document (the per-token log-probability of the reference in T minus
            that of the source text copied); "auto" = the fewest that reach p <= 0.001 (a single source language is
            one unit: 1999 draws). One more set of each kind is the placebo.
        generate_draws: random zeroed sets also generated through lm-eval (their off-target rates beside the
            proxy's, to show how the two agree).
        proxy_limit: documents the proxy scores per head set (the first of the task's; null = as many as `limit`): a
            thousand-odd random sets on every document of NTREX-128 would cost hours even on a GPU.
        limit: documents per task (null = all).
        max_gen_toks: generation budget per document (both tasks stop at a newline).
        batch_size: lm-eval batch size.
    """

    languages: Optional[list[str]] = None
    source_lang: str = "en"
    tasks: list[str] = field(default_factory=lambda: ["xquad_xling", "ntrex_en"])
    heads: Optional[PositiveInt] = None
    scale_up: NonNegativeFloat = 3.0
    random_draws: Draws = "auto"
    generate_draws: NonNegativeInt = 2
    proxy_limit: Optional[PositiveInt] = 48
    limit: Optional[PositiveInt] = 24
    max_gen_toks: PositiveInt = 40
    batch_size: PositiveInt = 8


@dataclass
class TransferSettings:
    """Step 5: attention transfer (the Alice occupation probe).

    Args:
        pairs: [language 1, language 2] pairs: the prompt states Alice's occupation X in language 1 and Y
            in language 2, then asks in English.
        heads: heads per language and intervention (default as for off_target).
        scale_up: factor on language 1's heads (the paper: 3).
        random_draws: random head sets per pair for each of the two claims against random heads (x scale_up, zeroed;
            measured by the teacher-forced log-odds); "auto" = the fewest that reach p <= 0.001 over the pairs'
            independent head sets. One more of each is the placebo.
        items: probe items per pair (ordered occupation pairs, both statement orders; null = all).
        batch_size: prompts per forward pass.
    """

    pairs: Optional[list[list[str]]] = None
    heads: Optional[PositiveInt] = None
    scale_up: NonNegativeFloat = 3.0
    random_draws: Draws = "auto"
    items: Optional[PositiveInt] = 40
    batch_size: PositiveInt = 8


@dataclass
class LcbSettings:
    """Step 6: the Language Confusion Benchmark (Marchisio et al., 2024) under head interventions.

    Crosslingual prompts ask in English for an answer in language T. Interventions: none, zero the source
    language's (English) heads, scale T's heads up, scale random heads up (draws). Completions are scored with
    the benchmark's line-level and word-level pass rates (eval/lcb.py).

    Args:
        languages: target languages T (scored in step 1 and in the benchmark's crosslingual set; default: the
            scored languages the task has).
        task: "crosslingual" (English instruction, answer in T) or "monolingual" (prompt in T).
        source_lang: the language whose heads are zeroed (the instruction's: en).
        sources: benchmark sources to draw prompts from (null = all of the task's).
        limit: prompts per language (null = all: about 300 crosslingual, 100-300 monolingual).
        shots: few-shot examples (the benchmark: 1 or 5 for base models, 0 for chat models).
        chat_template: use the tokenizer's chat template (null: when it has one; false for base models whose
            tokenizer ships a template anyway).
        heads: heads per intervention (default as for off_target).
        scale_up: factor of the "scale T's heads up" intervention.
        random_draws: random head sets per language scaled up like T's heads (generated): "auto" = the fewest that
            reach p <= 0.001 over the languages. One more is the placebo.
        max_new_tokens: generation budget (the benchmark: 100).
        batch_size: prompts per generate call.
    """

    languages: Optional[list[str]] = None
    task: Literal["crosslingual", "monolingual"] = "crosslingual"
    source_lang: str = "en"
    sources: Optional[list[str]] = None
    limit: Optional[PositiveInt] = 12
    shots: Shots = 1
    chat_template: Optional[bool] = None
    heads: Optional[PositiveInt] = None
    scale_up: NonNegativeFloat = 3.0
    random_draws: Draws = "auto"
    max_new_tokens: PositiveInt = 100
    batch_size: PositiveInt = 8


@dataclass
class ControlSettings:
    """The random-weight control: the same architecture re-initialised from its config (fixed seed) runs through the
    same steps at the same sizes (the same texts, items, documents and draws); each finding says what the control
    shows: "holds" (so the main result is not evidence of learned language heads), "does not hold" or
    "inconclusive" with enough power (its detectable effect is below the main effect), or "underpowered" (never
    read as a pass).

    Args:
        enabled: run the control.
        seed: the re-initialisation seed.
        scale: removed (the control runs at the main run's sizes, or it could not fail); must stay null.
    """

    enabled: bool = True
    seed: NonNegativeInt = 1234
    scale: Optional[float] = None
