"""Corpora: texts to score (Wikipedia, NTREX-128, local files, embedded passages), XQuAD, prompts, the
Language Confusion Benchmark's prompts, and the assets shipped in corpora/data. Builds on core only."""

from .._lazy import lazy_exports

# `lahis_ctrl.corpora` was the texts module before the layered layout: its names still resolve here.
_TEXTS = ("load_texts", "check_source", "ntrex_lines", "join_lines", "embedded_languages",
          "load_wikipedia", "EMBEDDED_LANGUAGES", "NTREX_URL", "NTREX_CODES", "WIKIPEDIA_DATASET", "WIKIPEDIA_DATE")
__getattr__, __dir__ = lazy_exports(__name__, globals(), {name: "texts" for name in _TEXTS})
