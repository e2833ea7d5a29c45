"""Core: model facts (architecture), the head layout, head masks and their control (hooks, fold, export),
the LM-likelihood core, model loading, artifacts (files with their model facts), errors and file I/O.

Nothing here imports a higher layer (lahis, eval, corpora, integrations, experiments, cli)."""
