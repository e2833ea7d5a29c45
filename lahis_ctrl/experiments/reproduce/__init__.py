"""`lahis reproduce`: the paper's experiments end to end on one model, written up as a report folder.

    lahis reproduce --config configs/reproduce-gemma-3-270m.yaml --data ../shared/data

Steps (each one's result is stored under <out>/work/steps/ with a fingerprint of its settings; a rerun
skips every step whose settings did not change, and the long steps also resume mid-way through their own
checkpoints):
  1. scores    LAHIS scores of every language on NTREX-128 passages; specific / general heads; heatmaps.
  2. ppl       the ppl-cross matrix: X's perplexity with Y's top-k specific heads zeroed vs k random heads,
               on NTREX passages that were not scored.
  3. xquad     per language: a soft mask on its top-n LAHIS heads and one on n random heads, trained on
               the reference train split, evaluated with the original model on held-out test items.
  4. off_target  lm-eval's xquad_xling_<T> and ntrex_en_<T> with and without head interventions (zeroing
               the source language's heads, scaling the target language's heads up, and controls).
  5. transfer  the Alice occupation probe (attention transfer) with language-1 heads x3 and language-2
               heads x0, against random heads.
The report (<out>/report.md, results.json with every number, plots/*.png, config.yaml, the package version)
is rewritten from the stored results at the end of every run; a "Findings" section checks each of the
paper's claims against the numbers, so what does not hold on this model says so.
"""

from __future__ import annotations

from .config import STEPS, OffTargetSettings, PplSettings, ScoringSettings, TransferSettings, XquadSettings
from .run import reproduce

__all__ = ["STEPS", "OffTargetSettings", "PplSettings", "ScoringSettings", "TransferSettings", "XquadSettings",
           "reproduce"]
