"""Corpora: texts to score (Wikipedia, NTREX-128, local files, embedded passages), XQuAD, prompts, the
Language Confusion Benchmark's prompts, and the assets shipped in corpora/data. Builds on core only."""
