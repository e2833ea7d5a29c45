"""Evaluation: QA metrics, perplexity probes, language ID, audits, statistics."""
