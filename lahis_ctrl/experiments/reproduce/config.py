"""The settings of `lahis reproduce`: one dataclass per section of its YAML config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

STEPS = ("scores", "ppl", "xquad", "off_target", "transfer", "lcb")


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
    texts: int = 20
    max_length: int = 256
    mode: str = "fast"
    batch_size: int = 4
    q: float = 0.96
    min_rep: Optional[int] = None


@dataclass
class PplSettings:
    """Step 2: the perplexity matrix.

    Args:
        languages: text languages X (default: every scored language); columns Y are all scored languages.
        texts: held-out passages per language (taken after the scored ones, never the same text).
        k: heads zeroed per language (its top-k language-specific heads) and per random draw.
        random_trials: draws of k random heads per language: the random baseline's distribution (the own heads'
            increase is ranked among the draws').
        max_length: tokens per passage.
        batch_size: passages per forward pass.
    """

    languages: Optional[list[str]] = None
    texts: int = 8
    k: int = 3
    random_trials: int = 20
    max_length: int = 256
    batch_size: int = 4


@dataclass
class XquadSettings:
    """Step 3: soft head masks on XQuAD.

    Args:
        languages: XQuAD languages (each must be scored in step 1).
        heads: trainable heads per mask; default max(4, 2% of all heads) (the reference: 2%).
        train_items: first items of the reference train split (items [0:390], 200 shuffled with seed 68);
            null = all 200.
        test_items: first items of the held-out test split (items [390:1190]); null = all 800.
        epochs: training epochs (the reference: 2).
        lr: AdamW learning rate (the reference: 1e-2).
        random_masks: random-heads soft masks (seeds seed, seed+1, ...): the random baseline's distribution; the
            first is the reference's single-seed baseline ("random").
        max_new_tokens: greedy tokens generated per answer (the reference: 10).
        batch_size: prompts per generate call.
    """

    languages: list[str] = field(default_factory=lambda: ["de", "es", "hi", "ru"])
    heads: Optional[int] = None
    train_items: Optional[int] = 48
    test_items: Optional[int] = 80
    epochs: int = 1
    lr: float = 1e-2
    random_masks: int = 3
    max_new_tokens: int = 10
    batch_size: int = 8


@dataclass
class OffTargetSettings:
    """Step 4: off-target language rates through lm-eval.

    Args:
        languages: target languages T (scored in step 1; tasks xquad_xling_<T> and ntrex_en_<T>).
        source_lang: the other language of the prompt (xquad_xling's context, the translation's source).
        tasks: task families run per language: "xquad_xling" and/or "ntrex_en".
        heads: heads per intervention (default max(1, 1% of all heads) as in the paper, at least 2).
        scale_up: the factor of the "scale T's heads up" intervention.
        random_draws: draws of random heads zeroed (the control's distribution).
        limit: documents per task (null = all).
        max_gen_toks: generation budget per document (both tasks stop at a newline).
        batch_size: lm-eval batch size.
    """

    languages: list[str] = field(default_factory=lambda: ["de", "es", "hi", "ru"])
    source_lang: str = "en"
    tasks: list[str] = field(default_factory=lambda: ["xquad_xling", "ntrex_en"])
    heads: Optional[int] = None
    scale_up: float = 3.0
    random_draws: int = 3
    limit: Optional[int] = 24
    max_gen_toks: int = 40
    batch_size: int = 8


@dataclass
class TransferSettings:
    """Step 5: attention transfer (the Alice occupation probe).

    Args:
        pairs: [language 1, language 2] pairs: the prompt states Alice's occupation X in language 1 and Y
            in language 2, then asks in English.
        heads: heads per language and intervention (default as for off_target).
        scale_up: factor on language 1's heads (the paper: 3).
        random_draws: draws of random heads for each of the two controls (x scale_up, zeroed).
        items: probe items per pair (ordered occupation pairs, both statement orders; null = all).
        batch_size: prompts per forward pass.
    """

    pairs: list[list[str]] = field(default_factory=lambda: [["de", "es"], ["es", "de"]])
    heads: Optional[int] = None
    scale_up: float = 3.0
    random_draws: int = 3
    items: Optional[int] = 40
    batch_size: int = 8


@dataclass
class LcbSettings:
    """Step 6: the Language Confusion Benchmark (Marchisio et al., 2024) under head interventions.

    Crosslingual prompts ask in English for an answer in language T. Interventions: none, zero the source
    language's (English) heads, scale T's heads up, zero random heads (draws). Completions are scored with
    the benchmark's line-level and word-level pass rates (eval/lcb.py).

    Args:
        languages: target languages T (scored in step 1 and in the benchmark's crosslingual set).
        task: "crosslingual" (English instruction, answer in T) or "monolingual" (prompt in T).
        source_lang: the language whose heads are zeroed (the instruction's: en).
        sources: benchmark sources to draw prompts from (null = all of the task's).
        limit: prompts per language (null = all: about 300 crosslingual, 100-300 monolingual).
        shots: few-shot examples (the benchmark: 1 or 5 for base models, 0 for chat models).
        chat_template: use the tokenizer's chat template (null: when it has one; false for base models whose
            tokenizer ships a template anyway).
        heads: heads per intervention (default as for off_target).
        scale_up: factor of the "scale T's heads up" intervention.
        random_draws: draws of random heads zeroed.
        max_new_tokens: generation budget (the benchmark: 100).
        batch_size: prompts per generate call.
    """

    languages: list[str] = field(default_factory=lambda: ["de", "es", "hi", "ru"])
    task: str = "crosslingual"
    source_lang: str = "en"
    sources: Optional[list[str]] = None
    limit: Optional[int] = 12
    shots: int = 1
    chat_template: Optional[bool] = None
    heads: Optional[int] = None
    scale_up: float = 3.0
    random_draws: int = 2
    max_new_tokens: int = 100
    batch_size: int = 8


@dataclass
class ControlSettings:
    """The random-weight control: the same architecture re-initialised from its config (fixed seed) runs
    through the same steps at a reduced size; each finding says whether it also holds there. A finding that
    also holds on random weights is not evidence of learned language heads.

    Args:
        enabled: run the control.
        scale: sizes of the control run relative to the main run (texts, items, documents, draws; each at
            least a small minimum).
        seed: the re-initialisation seed.
    """

    enabled: bool = True
    scale: float = 0.25
    seed: int = 1234
