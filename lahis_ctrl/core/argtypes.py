"""The value types of options: ranges and choices as types (jsonargparse.typing), shared by every `lahis` command
and the config sections of `lahis reproduce`.

jsonargparse checks a value against its type while it parses the command line or a config file, so a value out
of range or not among the choices is refused before anything runs (no model loads), and `--help` shows the type
(`PositiveInt`, `{fast,faithful}`). These are plain `int` / `float` / `str` subtypes: Python callers pass
ordinary numbers and strings.
"""

from __future__ import annotations

from typing import Literal

from jsonargparse.typing import (ClosedUnitInterval, NonNegativeFloat, NonNegativeInt, OpenUnitInterval,
                                 PositiveFloat, PositiveInt, restricted_number_type)

__all__ = ["ClosedUnitInterval", "NonNegativeFloat", "NonNegativeInt", "OpenUnitInterval", "PositiveFloat",
           "PositiveInt", "Dtype", "MaskDtype", "MaxLength", "Quantile", "Share", "Shots", "Device"]

# model weights: 'auto' keeps the checkpoint's own dtype (what transformers' dtype="auto" does)
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# the per-head scales and their accumulators
MaskDtype = Literal["float32", "bfloat16"]
# tokens per text: a next-token loss needs at least two
MaxLength = restricted_number_type("MaxLength", int, (">=", 2), docstring="int restricted to be >=2 (tokens)")
# the quantile of a score matrix above which a head is kept: q = 1 would keep nothing
Quantile = restricted_number_type("Quantile", float, [(">=", 0.0), ("<", 1.0)],
                                  docstring="float restricted to be >=0 and <1")
# a share of all heads: 0 would train nothing
Share = restricted_number_type("Share", float, [(">", 0.0), ("<=", 1.0)], docstring="float restricted to be >0 and <=1")
# few-shot examples of the Language Confusion Benchmark (its prompts have at most 5)
Shots = restricted_number_type("Shots", int, [(">=", 0), ("<=", 5)], docstring="int restricted to be >=0 and <=5")
# where one process runs a model: 'auto' (the first GPU when there is one, else the CPU), 'cpu', 'cuda', 'cuda:1',
# 'mps', ... (any torch device string; checked by torch.device when the command starts)
Device = str
