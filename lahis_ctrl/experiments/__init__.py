"""Experiments: `lahis reproduce` (the paper's experiments on one model, written up as a report with
statistics) and `lahis demo` (a small preset of it on the embedded model)."""
