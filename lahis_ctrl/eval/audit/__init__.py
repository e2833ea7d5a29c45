"""Off-target language audits: `lahis audit INPUT` identifies the language of generated texts and reports, per
condition (run and group: a mask, an lm-eval task) and expected language, how many came out in that language
(on-target), in another one (off-target), or could not be told (undetermined: empty, digits only, too short,
code, low confidence). Each figure is named by what it counts (rates.GLOSSARY): the off-target *rate* is among the
outputs whose language was identified (as lm-eval's off_target_rate), *shares* are among all outputs; every
figure has its 95% Wilson score interval, and different conditions are never pooled.

Inputs (``--format auto`` tells them apart; readers.py):

- ``evaluate``: the per-example jsonl of ``lahis evaluate`` (``generation``, ``expected_lang`` or ``lang``;
  grouped by ``mask`` so a baseline and a masked run are reported side by side);
- ``lm-eval``: ``--log_samples`` files of lm-evaluation-harness (``samples_<task>_<date>.jsonl``, or the
  ``--output_path`` folder holding them); the text is ``filtered_resps[0]``, the expected language comes from
  ``--expected``, ``--lang_field`` (e.g. ``doc.lang``) or the task name (``xquad_de``, ``flores_en-de`` ->
  ``de``, ``belebele_deu_Latn`` -> ``de``); each run is labelled by its model folder, its mask (from the
  results file) and, where needed, its date; grouped by task;
- ``jsonl`` / ``csv``: any jsonl or CSV (with a header line), with ``--text_field`` / ``--lang_field`` (dotted
  paths such as ``doc.lang`` or ``resps.0.0`` reach into nested values) or ``--expected`` for all lines;
- ``text``: plain text, one generation a line (blank lines are skipped), with ``--expected LANG``.

``INPUT:FIELD=VALUE`` audits one condition of a file (``examples.jsonl:mask=lahis``).

``--compare B`` (compare.py): a second run on the same items (matched by lm-eval task and ``doc_id``, or the ``id``
/ ``doc_id`` field, else by line order): per expected language and overall, the change in off-target rate B - A on
the pairs where both outputs were determined, with the paired interval and exact McNemar p of
eval.stats.paired_difference. ``--compare_by mask``: every other mask of one file against its first one.

``--metric lcb``: the Language Confusion Benchmark (`run_lcb_audit`): LPR / WPR / LCPR per language and source
(eval.lcb.lcb_report) with Wilson intervals where a figure is one proportion, and the whole-text figures beside.

Outputs (report.py), written atomically together: ``audit.json``, ``audit.md``, ``audit.png``, ``compare.png`` with
comparisons, ``examples.jsonl`` with ``--details``, in a folder per input and kind of report (gens.jsonl.audit/,
gens.jsonl.lcb-audit/, gens.jsonl.audit-compare/); a folder holding another audit's report is refused unless ``--overwrite``.
``--max_off_target RATE`` makes the command exit with status 1 when any row's off-target rate is above RATE.
"""

from __future__ import annotations

from .compare import compare_runs, match_items
from .rates import CONFIDENCE, GLOSSARY, INTERVAL, UND, audit_texts, counts, lcb_audit, row_name
from .readers import (FORMATS, LCB_FORMATS, AuditRecord, LCBRecord, read_lcb_records, read_records, split_selector,
                      task_language)
from .report import (METRICS, default_out_dir, render_lcb_markdown, render_markdown, run_audit, run_lcb_audit,
                     summary, write_report)
from ..lcb import whole_text

__all__ = ["AuditRecord", "CONFIDENCE", "FORMATS", "GLOSSARY", "INTERVAL", "LCBRecord", "LCB_FORMATS", "METRICS",
           "UND", "audit_texts", "compare_runs", "counts", "default_out_dir", "lcb_audit", "match_items",
           "read_lcb_records", "read_records", "render_lcb_markdown", "render_markdown", "row_name", "run_audit",
           "run_lcb_audit", "split_selector", "summary", "task_language", "whole_text", "write_report"]
