"""The LAHIS method: per-language head importance scores, language-specific and language-general heads,
and the soft head mask trained on QA. Builds on core only."""
