"""The Language Confusion Benchmark as lm-eval tasks (tasks/lcb/): task files, prompts (base-model format and chat
template), the per-task LPR/WPR/LCPR aggregation and the group scores against eval.lcb.lcb_report, and end-to-end runs
through lahis_hf with masks on a tiny random model (and `lahis audit` on the samples they write).

Most tests read a small synthetic copy of the benchmark's files (every source and language, 2 prompts each); the
real copy in $LAHIS_DATA_DIR/lcb is checked for its counts and prompts.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
from pathlib import Path

import pytest

from lahis_ctrl.core.errors import LahisError
from lahis_ctrl.corpora import lcb as lcb_data
from lahis_ctrl.corpora.lcb import (
    CROSSLINGUAL_LANGUAGES, CROSSLINGUAL_SOURCES, MONOLINGUAL_LANGUAGES, MONOLINGUAL_SOURCES, SOURCE_NAMES,
    WPR_LANGUAGES,
)
from lahis_ctrl.eval.lcb import lcb_rates, lcb_report
from lahis_ctrl.integrations.lm_eval import task_utils as tu

TASKS_FOLDER = Path(tu.__file__).parent / "tasks" / "lcb"
PROMPTS_PER_FILE = 2
ENV_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

# Two sentences per language that lid.176.ftz labels right, line by line (p > 0.3), each of >= 5 tokens.
SENT = {
    "ar": ["يمكنك زيارة المتحف الوطني في وسط المدينة كل يوم", "يفتح المتحف أبوابه في الصباح ويغلق في المساء"],
    "de": ["Sie können das Nationalmuseum in der Innenstadt jeden Tag besuchen",
           "Das Museum öffnet morgens und schließt am Abend"],
    "en": ["You can visit the national museum in the city centre every day",
           "The museum opens in the morning and closes in the evening"],
    "es": ["Puedes visitar el museo nacional en el centro de la ciudad todos los días",
           "El museo abre por la mañana y cierra por la tarde"],
    "fr": ["Vous pouvez visiter le musée national au centre de la ville tous les jours",
           "Le musée ouvre le matin et ferme le soir"],
    "hi": ["आप हर दिन शहर के केंद्र में राष्ट्रीय संग्रहालय देख सकते हैं",
           "संग्रहालय सुबह खुलता है और शाम को बंद हो जाता है"],
    "id": ["Anda dapat mengunjungi museum nasional di pusat kota setiap hari",
           "Museum ini buka pada pagi hari dan tutup pada sore hari"],
    "it": ["Puoi visitare il museo nazionale nel centro della città ogni giorno",
           "Il museo apre ogni mattina alle nove e chiude alle sei di sera"],
    "ja": ["毎日、町の中心にある国立博物館を訪れることができます", "博物館は朝に開いて、夕方に閉まります"],
    "ko": ["당신은 매일 시내 중심에 있는 국립 박물관을 방문할 수 있습니다", "박물관은 아침에 문을 열고 저녁에 문을 닫습니다"],
    "pt": ["Você pode visitar o museu nacional no centro da cidade todos os dias",
           "O museu abre todas as manhãs às nove horas e fecha às seis da tarde"],
    "ru": ["Вы можете посетить национальный музей в центре города каждый день",
           "Музей открывается утром и закрывается вечером"],
    "tr": ["Şehir merkezindeki ulusal müzeyi her gün ziyaret edebilirsiniz", "Müze sabah açılır ve akşam kapanır"],
    "vi": ["Bạn có thể tham quan bảo tàng quốc gia ở trung tâm thành phố mỗi ngày",
           "Bảo tàng mở cửa vào buổi sáng và đóng cửa vào buổi tối"],
    "zh": ["你每天都可以去市中心的国家博物馆参观", "博物馆早上开门，晚上关门"],
}
EN_LINE = "The museum opens in the morning and closes in the evening"


def answer(kind: int, lang: str) -> str:
    """0: two lines in lang; 1: English; 2: too short (skipped); 3: lang with the English word 'computer' (a word
    error in ar hi ja ko ru zh); 4: a lang line then an English line (a line error unless lang is en); 5: lang, then
    a base model going on with the next few-shot turn (cut at "\\nQ:")."""
    a, b = SENT[lang]
    return [f"{a}\n{b}", EN_LINE, "OK.", f"{a} computer", f"{a}\n{EN_LINE}", f" {a}\nQ: {EN_LINE}\nA: {b}"][kind]


# Arabic by hand: aya [0, 4], dolly [3, 2], okapi [0, 5] -> LPR per source 1/2, 1, 1 (dolly: one scored completion),
# WPR 1, 0, 1: the language's LPR (0.5 + 1 + 1) / 3, WPR 2/3, LCPR 2 * (5/6) * (2/3) / (5/6 + 2/3) = 20/27.
AR_KINDS = {("aya", 0): 0, ("aya", 1): 4, ("dolly", 0): 3, ("dolly", 1): 2, ("okapi", 0): 0, ("okapi", 1): 5}


def kind_of(lang: str, folder: str, k: int) -> int:
    if lang == "ar" and (folder, k) in AR_KINDS:
        return AR_KINDS[(folder, k)]
    return (k + len(folder) + len(lang) * 3) % 6


_PROMPT = re.compile(r"Prompt (\d+) \[(\w+) (\w+) (\w+)\]")


def scripted_answer(context: str) -> str:
    """The answer for the last synthetic prompt in a context (base-model format or chat template)."""
    k, task, folder, lang = _PROMPT.findall(context)[-1]
    return answer(kind_of(lang, folder, int(k)), lang)


def write_lcb_copy(root: Path) -> Path:
    """A copy of the benchmark's layout: every task, source and language, PROMPTS_PER_FILE prompts a file, and a
    few_shot_prompting.py with five examples per task and language."""
    base = root / "lcb"
    for task, sources in (("monolingual", MONOLINGUAL_SOURCES), ("crosslingual", CROSSLINGUAL_SOURCES)):
        for folder, langs in sources.items():
            for lang in langs:
                path = base / "test_sets" / task / folder / f"{lang}.csv"
                path.parent.mkdir(parents=True, exist_ok=True)
                cols = ["prompt", "source", "language"] + (["location", "phrasing"] if task == "crosslingual" else [])
                with path.open("w", encoding="utf-8", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(cols)
                    for k in range(PROMPTS_PER_FILE):
                        row = [f"Prompt {k} [{task} {folder} {lang}]\nwith a second line",
                               SOURCE_NAMES[task][folder], lang]
                        w.writerow(row + (["Start", "reply in {language_requested}"] if task == "crosslingual" else []))
    tables = {}
    for task, langs in (("monolingual", MONOLINGUAL_LANGUAGES), ("crosslingual", CROSSLINGUAL_LANGUAGES)):
        tables[task] = {lang: [t for i in range(5) for t in (
            {"role": "User", "message": f"Example question {i} of {task} {lang}"},
            {"role": "Chatbot", "message": f"Example answer {i}"})] for lang in langs}
    (base / "few_shot_prompting.py").write_text(
        f"few_shot_examples_monolingual = {tables['monolingual']!r}\n"
        f"few_shot_examples_crosslingual = {tables['crosslingual']!r}\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def lcb_copy(tmp_path_factory) -> Path:
    return write_lcb_copy(tmp_path_factory.mktemp("lcbdata"))


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    from lahis_ctrl.integrations.lm_eval.runner import tasks_dir

    return TaskManager(include_path=str(tasks_dir()), include_defaults=False)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", "llama")


# one thread: the tiny models gain nothing from more, and the machines' 2 cores are shared (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


class ScriptedLM:
    """An lm-eval LM that answers from a script (no model): the group machinery of lm-eval, real contexts."""

    def __new__(cls, chat: bool = False):
        from lm_eval.api.model import LM

        class _LM(LM):
            def __init__(self):
                super().__init__()
                self.requests = []

            def generate_until(self, requests, disable_tqdm: bool = False):
                self.requests += [r.args for r in requests]
                return [scripted_answer(r.args[0]) for r in requests]

            def loglikelihood(self, requests, disable_tqdm: bool = False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
                raise NotImplementedError

            def apply_chat_template(self, chat_history, add_generation_prompt=True):
                return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in chat_history) + \
                    ("<assistant>" if add_generation_prompt else "")

            @property
            def tokenizer_name(self) -> str:
                return "scripted"

        return _LM()


def _evaluate(task_manager, tasks, model, **kw):
    import lm_eval

    import lahis_ctrl  # noqa: F401  (registers lahis_hf)

    return lm_eval.simple_evaluate(model=model, tasks=list(tasks), bootstrap_iters=0, log_samples=True,
                                   task_manager=task_manager, **kw)


def _metrics(result, name) -> dict:
    block = result["results"].get(name) or result["groups"][name]
    return {k.split(",")[0]: v for k, v in block.items() if k.endswith(",none") and "_stderr" not in k}


# ---------------------------------------------------------------------------------------------------------------
# Task files


def test_task_files_follow_the_conventions(task_manager):
    import yaml

    names = set(task_manager.all_tasks)
    mono = {f"lcb_monolingual_{lang}" for lang in MONOLINGUAL_LANGUAGES}
    cross = {f"lcb_crosslingual_{lang}" for lang in CROSSLINGUAL_LANGUAGES}
    assert len(mono) == 15 and len(cross) == 14
    assert {n for n in names if n.startswith("lcb")} == mono | cross | {"lcb", "lcb_monolingual", "lcb_crosslingual"}
    for name in sorted(mono | cross):
        task, lang = name.split("_")[1:]
        assert (TASKS_FOLDER / f"{name}.yaml").read_text().splitlines() == [
            "include: _lcb_common_yaml", f"task: {name}", f"dataset_kwargs: {{task: {task}, lang: {lang}}}"]
    for task, langs in (("monolingual", MONOLINGUAL_LANGUAGES), ("crosslingual", CROSSLINGUAL_LANGUAGES)):
        group = yaml.safe_load((TASKS_FOLDER / f"lcb_{task}.yaml").read_text())
        assert group["task"] == [f"lcb_{task}_{lang}" for lang in sorted(langs)]
        agg = {a["metric"]: a for a in group["aggregate_metric_list"]}
        assert agg["lpr"]["weight_by_size"] is False and agg["wpr"]["weight_by_size"] is False
        assert "lcpr" not in agg and group["metadata"]["version"] == "lahis-2.0"
    assert yaml.safe_load((TASKS_FOLDER / "lcb.yaml").read_text())["task"] == ["lcb_monolingual", "lcb_crosslingual"]
    refs = re.findall(r"!function\s+([\w.]+)", (TASKS_FOLDER / "_lcb_common_yaml").read_text())
    assert {r.rsplit(".", 1)[1] for r in refs} == {"LCBTask", "lcb", "lcb_prompt", "process_lcb", "lcb_lpr",
                                                    "lcb_wpr", "lcb_lcpr"}
    for ref in refs:
        assert callable(getattr(tu, ref.rsplit(".", 1)[1]))


def test_task_config_generation_and_aggregations(task_manager, lcb_copy, monkeypatch):
    monkeypatch.setenv("LAHIS_DATA_DIR", str(lcb_copy))
    task = task_manager.load(["lcb_monolingual_ar"])["tasks"]["lcb_monolingual_ar"]
    assert type(task).__name__ == "LCBTask" and task.VERSION == "lahis-2.0"
    gen = task.config.generation_kwargs
    assert gen["until"] == ["\nQ:"] and gen["max_gen_toks"] == 100 and gen["do_sample"] is False
    agg = task.aggregation()
    assert (agg["lpr"], agg["wpr"], agg["lcpr"]) == (tu.lcb_lpr, tu.lcb_wpr, tu.lcb_lcpr)
    assert task.higher_is_better() == {"lpr": True, "wpr": True, "lcpr": True, "off_target_rate": False,
                                       "off_target_share": False, "undetermined_share": False}
    docs = list(task.test_docs())
    assert [d["id"] for d in docs] == [f"monolingual/{f}/ar/{k}" for f in ("aya", "dolly", "okapi") for k in (0, 1)]
    assert docs[2]["source"] == "dolly_human_edited" and docs[2]["lcb_shots"] == 1 and docs[2]["lcb_chat_shots"] == 0
    assert docs[0]["data_dir"] == str(lcb_copy)


# ---------------------------------------------------------------------------------------------------------------
# Prompts


def test_base_model_prompt_and_chat_template(task_manager, lcb_copy, monkeypatch):
    monkeypatch.setenv("LAHIS_DATA_DIR", str(lcb_copy))
    task = task_manager.load(["lcb_crosslingual_ja"])["tasks"]["lcb_crosslingual_ja"]
    doc = list(task.test_docs())[0]
    prompt = doc["prompt"]
    # base model: the benchmark's turns_to_prompt with one example (lm-eval reports an unset --num_fewshot as 0)
    assert task.fewshot_context(doc, 0) == (
        f"Q: Example question 0 of crosslingual ja\nA: Example answer 0\n\nQ: {prompt}\nA:")
    shots = lcb_data.few_shot_examples("crosslingual", "ja", lcb_copy)
    assert task.fewshot_context(doc, 0) == lcb_data.base_model_prompt(shots[:2] + [{"role": "User", "message": prompt}])
    # chat template: the prompt alone as the user turn (no examples), whatever fewshot_as_multiturn says
    template = ScriptedLM().apply_chat_template
    for multiturn in (False, True):
        assert task.fewshot_context(doc, 0, apply_chat_template=True, chat_template=template,
                                    fewshot_as_multiturn=multiturn) == f"<user>{prompt}</user><assistant>"
    assert task.fewshot_context(doc, 0, system_instruction="Be brief.") == \
        f"Be brief.\n\nQ: Example question 0 of crosslingual ja\nA: Example answer 0\n\nQ: {prompt}\nA:"
    # --num_fewshot k >= 1 sets the examples of both formats
    task.set_config("num_fewshot", 2)
    assert task.fewshot_context(doc, 2).count("\nA: Example answer") == 2
    assert task.fewshot_context(doc, 2, apply_chat_template=True, chat_template=template) == (
        "<user>Example question 0 of crosslingual ja</user><assistant>Example answer 0</assistant>"
        "<user>Example question 1 of crosslingual ja</user><assistant>Example answer 1</assistant>"
        f"<user>{prompt}</user><assistant>")
    assert task.doc_to_text(doc) == prompt and task.doc_to_target(doc) == "ja"


def test_shots_from_metadata(lcb_copy):
    rows = tu.lcb("monolingual", "ko", data_dir=str(lcb_copy), lcb_shots=5, lcb_chat_shots="1")["test"]
    doc = rows[0]
    assert (doc["lcb_shots"], doc["lcb_chat_shots"]) == (5, 1)
    assert tu.lcb_context(doc).count("Q: Example question") == 5
    assert tu.lcb_context({**doc, "lcb_shots": 0}) == f"Q: {doc['prompt']}\nA:"
    template = ScriptedLM().apply_chat_template
    assert tu.lcb_context(doc, chat_template=template).count("<assistant>Example answer") == 1
    assert len(tu.lcb("monolingual", "ko", start=1, data_dir=str(lcb_copy))["test"]) == 1
    for bad in (6, -1, 1.5, "two"):
        with pytest.raises(LahisError, match=r"lcb_shots must be a whole number from 0 to 5"):
            tu.lcb("monolingual", "ko", data_dir=str(lcb_copy), lcb_shots=bad)
    with pytest.raises(LahisError, match=r"--num_fewshot must be a whole number from 0 to 5"):
        tu.lcb_context(doc, num_fewshot=7)
    with pytest.raises(LahisError, match="has no language 'xx'"):
        tu.lcb("monolingual", "xx", data_dir=str(lcb_copy))
    with pytest.raises(LahisError, match="no Language Confusion Benchmark files"):
        tu.lcb("monolingual", "ko", data_dir=str(lcb_copy / "lcb" / "test_sets"))


def test_the_real_benchmark_files(shared_data, task_manager, monkeypatch):
    if not (shared_data / "lcb" / "test_sets").is_dir():
        pytest.skip(f"no LCB copy under {shared_data}")
    monkeypatch.setenv("LAHIS_DATA_DIR", str(shared_data))
    loaded = task_manager.load(["lcb"])
    assert set(loaded["groups"]) == {"lcb", "lcb_monolingual", "lcb_crosslingual"}
    tasks = loaded["tasks"]
    assert len(tasks) == 29
    sizes = {name: len(list(t.test_docs())) for name, t in tasks.items()}
    assert sum(n for name, n in sizes.items() if "monolingual" in name) == 2400  # no Okapi ru/hi in the files
    assert sum(n for name, n in sizes.items() if "crosslingual" in name) == 4186
    for lang in MONOLINGUAL_LANGUAGES:
        assert sizes[f"lcb_monolingual_{lang}"] == 100 * len(lcb_data.sources_for("monolingual", lang))
    task = tasks["lcb_monolingual_ar"]
    doc = list(task.test_docs())[0]
    row = lcb_data.load_lcb("monolingual", "ar", shared_data)[0]
    assert doc["prompt"] == row["prompt"] and doc["source"] == "aya_human_annotated"
    turns = lcb_data.chat_turns(row["prompt"], "monolingual", "ar", 1, shared_data)
    context = task.fewshot_context(doc, 0)
    assert context == lcb_data.base_model_prompt(turns) and context.endswith(f"\nQ: {row['prompt']}\nA:")


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def _outcome(source, skipped=False, line_error=None, word_error=None, language="ru"):
    return {"language": language, "source": source, "skipped": skipped, "line_error": line_error,
            "word_error": word_error}


def test_task_aggregation_is_per_source_then_mean():
    items = [_outcome("a", line_error=False, word_error=False), _outcome("a", line_error=True),
             _outcome("a", skipped=True),  # skipped: counts nowhere, not as a pass
             _outcome("b", skipped=True),  # no scored completion: the reference's 1.0
             _outcome("c", skipped=True), _outcome("c", line_error=True),
             _outcome("d", line_error=False, word_error=True), _outcome("d", line_error=False, word_error=False)]
    # LPR per source: a 1/2, b 1, c 0, d 1 -> 0.625; WPR: a 1 (1 without line error, no word error), b 1, c 1
    # (nothing without a line error), d 1/2 -> 0.875; LCPR = 2 * 0.625 * 0.875 / 1.5
    assert tu.lcb_lpr(items) == 0.625 and tu.lcb_wpr(items) == 0.875
    assert tu.lcb_lcpr(items) == pytest.approx(2 * 0.625 * 0.875 / 1.5, abs=1e-15)
    fr = [dict(o, language="fr") for o in items]
    assert tu.lcb_lpr(fr) == 0.625 and math.isnan(tu.lcb_wpr(fr)) and tu.lcb_lcpr(fr) == 0.625
    with pytest.raises(LahisError, match="must be a dict with language, source"):
        tu.lcb_lpr([{"source": "a"}])


def test_process_results_per_completion():
    doc = {"language": "ru", "source": "okapi"}
    r = tu.process_lcb(doc, [answer(3, "ru")])
    assert r["lpr"] == r["wpr"] == r["lcpr"] == {"language": "ru", "source": "okapi", "skipped": False,
                                                 "line_error": False, "word_error": True}
    assert (r["off_target_rate"], r["off_target_share"], r["undetermined_share"]) == (0.0, 0.0, 0.0)
    r = tu.process_lcb({**doc, "language": "de"}, [answer(4, "de")])
    assert "wpr" not in r and r["lpr"]["line_error"] is True and r["off_target_rate"] == 0.0  # whole text: German
    r = tu.process_lcb({**doc, "language": "zh"}, [answer(5, "zh")])  # the English after "\nQ:" counts nowhere
    assert r["lpr"]["line_error"] is False and r["off_target_rate"] == 0.0
    r = tu.process_lcb(doc, ["OK."])
    assert r["lpr"]["skipped"] is True and math.isnan(r["off_target_rate"]) and r["undetermined_share"] == 1.0
    # the language-ID settings of the metadata travel with the document
    r = tu.process_lcb({**doc, "lid_min_chars": "1000"}, [answer(0, "ru")])
    assert r["lpr"]["line_error"] is False and r["undetermined_share"] == 1.0


def test_group_scores_equal_lcb_report(task_manager, lcb_copy, monkeypatch):
    """Through lm-eval's own task and group aggregation: each task's figures are lcb_report's per-language figures,
    each group's LPR / WPR its overall figures, on the same completions."""
    monkeypatch.setenv("LAHIS_DATA_DIR", str(lcb_copy))
    lm = ScriptedLM()
    result = _evaluate(task_manager, ["lcb"], lm)
    samples = result["samples"]
    assert len(samples) == 29
    rows = []
    for name, ss in samples.items():
        for s in ss:
            assert s["resps"][0][0] == scripted_answer(s["arguments"][0][0])
            rows.append({"completion": s["resps"][0][0], "language": s["doc"]["language"],
                         "source": s["doc"]["source"], "task": s["doc"]["task"]})
    report = lcb_report(rows)
    (entry,) = report["models"]
    for task, langs in (("monolingual", MONOLINGUAL_LANGUAGES), ("crosslingual", CROSSLINGUAL_LANGUAGES)):
        t = entry["tasks"][task]
        for lang in langs:
            got, want = _metrics(result, f"lcb_{task}_{lang}"), t["per_language"][lang]
            assert got["lpr"] == want["lpr"] and got["lcpr"] == want["lcpr"], (task, lang)
            if lang in WPR_LANGUAGES:
                assert got["wpr"] == want["wpr"]
            else:
                assert "wpr" not in got
        group = _metrics(result, f"lcb_{task}")
        # lm-eval sums with +, lcb_report with math.fsum: the same up to rounding
        assert group["lpr"] == pytest.approx(t["overall"]["lpr"], abs=1e-12)
        assert group["wpr"] == pytest.approx(t["overall"]["wpr"], abs=1e-12)
        assert "lcpr" not in group  # the benchmark's LCPR is the harmonic mean of these two, not a mean of tasks
        # the outcomes the samples keep give lcb_report's overall figures exactly, LCPR included
        outcomes = [s["lpr"] for name, ss in samples.items() if name.startswith(f"lcb_{task}_") for s in ss]
        rates = lcb_rates(outcomes)
        assert {k: rates[k] for k in ("lpr", "wpr", "lcpr")} == {k: t["overall"][k] for k in ("lpr", "wpr", "lcpr")}
        assert rates["n"] == len(outcomes) and rates["n_languages"] == len(langs)
        assert t["overall"]["lpr"] not in (0.0, 1.0) and t["overall"]["wpr"] not in (0.0, 1.0)
    ar = _metrics(result, "lcb_monolingual_ar")
    assert ar["lpr"] == 2.5 / 3 and ar["wpr"] == 2 / 3 and ar["lcpr"] == pytest.approx(20 / 27, abs=1e-15)
    # the whole-text metrics: per task lm-eval's nanmean of process_lcb's values
    ar_samples = samples["lcb_monolingual_ar"]
    values = [tu.off_target(s["resps"][0][0].split("\nQ:")[0], "ar")["off_target_rate"] for s in ar_samples]
    assert ar["off_target_rate"] == pytest.approx(sum(v for v in values if v == v) / sum(v == v for v in values))
    assert "lcb" not in result["results"] or not _metrics(result, "lcb")  # the two tasks are reported apart
    # the contexts are the base-model format with one example
    ctx, gen = lm.requests[0]
    assert ctx.startswith("Q: Example question 0 of ") and ctx.endswith("\nA:") and gen["until"] == ["\nQ:"]


def test_group_scores_under_a_chat_template(task_manager, lcb_copy, monkeypatch):
    monkeypatch.setenv("LAHIS_DATA_DIR", str(lcb_copy))
    lm = ScriptedLM()
    result = _evaluate(task_manager, ["lcb_crosslingual_ru", "lcb_crosslingual_zh"], lm, apply_chat_template=True)
    for (ctx, _), s in zip(lm.requests, result["samples"]["lcb_crosslingual_ru"]):
        assert ctx == f"<user>{s['doc']['prompt']}</user><assistant>"
    ru = _metrics(result, "lcb_crosslingual_ru")
    want = lcb_report([{"completion": s["resps"][0][0], **{k: s["doc"][k] for k in ("language", "source", "task")}}
                       for s in result["samples"]["lcb_crosslingual_ru"]])
    assert ru["lpr"] == want["models"][0]["tasks"]["crosslingual"]["overall"]["lpr"]


# ---------------------------------------------------------------------------------------------------------------
# End to end: lahis_hf with masks on a tiny random model


@pytest.fixture(scope="module")
def masks(tmp_path_factory):
    from tiny import tiny_model

    from lahis_ctrl.core.mask import HeadMask

    d = tmp_path_factory.mktemp("masks")
    model = tiny_model("llama")
    return {"ones": HeadMask.ones(model).save(d / "ones.safetensors"),
            "zero": HeadMask.from_heads(model, [(0, 0), (1, 2)], 0.0).save(d / "zero.safetensors")}


def test_lahis_hf_with_masks(task_manager, lcb_copy, tiny_dir, masks, monkeypatch):
    monkeypatch.setenv("LAHIS_DATA_DIR", str(lcb_copy))
    args = f"pretrained={tiny_dir},dtype=float32,max_length=512"
    tasks = ["lcb_monolingual_ru", "lcb_crosslingual_de"]
    runs = {name: _evaluate(task_manager, tasks, "lahis_hf", model_args=args + extra, limit=2, device="cpu")
            for name, extra in (("plain", ""), ("ones", f",mask={masks['ones']}"),
                                ("hooks", f",mask={masks['zero']},fold=false"))}
    outs = {name: [s["resps"][0][0] for t in tasks for s in r["samples"][t]] for name, r in runs.items()}
    assert outs["ones"] == outs["plain"] and outs["hooks"] != outs["plain"]
    assert runs["hooks"]["config"]["lahis_mask"]["mode"] == "hooks"
    r = runs["hooks"]
    assert set(_metrics(r, "lcb_monolingual_ru")) == {"lpr", "wpr", "lcpr", "off_target_rate", "off_target_share",
                                                          "undetermined_share"}
    assert set(_metrics(r, "lcb_crosslingual_de")) == {"lpr", "lcpr", "off_target_rate", "off_target_share",
                                                           "undetermined_share"}
    for t in tasks:
        for s in r["samples"][t]:
            ctx, gen = s["arguments"][0]
            assert ctx == tu.lcb_context(s["doc"])  # the base-model format, one example
            assert gen["until"] == ["\nQ:"] and gen["max_gen_toks"] == 100 and gen["do_sample"] is False
            assert "\nQ:" not in s["resps"][0][0]


def test_lahis_hf_chat_template(task_manager, lcb_copy, tmp_path, monkeypatch):
    from tiny import save_tiny, tiny_tokenizer

    model_dir = save_tiny(tmp_path / "chat", "llama")
    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    tok.save_pretrained(model_dir)
    monkeypatch.setenv("LAHIS_DATA_DIR", str(lcb_copy))
    r = _evaluate(task_manager, ["lcb_crosslingual_fr"], "lahis_hf", limit=1, device="cpu",
                  model_args=f"pretrained={model_dir},dtype=float32,max_length=512", gen_kwargs="max_gen_toks=4",
                  apply_chat_template=True)
    (s,) = r["samples"]["lcb_crosslingual_fr"]
    assert s["arguments"][0][0] == tok.apply_chat_template([{"role": "user", "content": s["doc"]["prompt"]}],
                                                           tokenize=False, add_generation_prompt=True)


def _lm_eval(argv: list[str], monkeypatch) -> None:
    """`lm_eval run ARGV` in this process, as the console script runs it (lm-eval's own parser)."""
    from lm_eval._cli.harness import HarnessCLI

    monkeypatch.setattr(sys, "argv", ["lm_eval", "run", *argv])
    cli = HarnessCLI()
    cli.execute(cli.parse_args())


def test_lm_eval_then_lahis_audit(lcb_copy, tiny_dir, masks, tmp_path, monkeypatch, capsys):
    """Plain `lm_eval` (this package's tasks and lahis_hf found without --include_path) writes real samples files of
    the lcb tasks and says which mask it applied; `lahis audit --metric lcb` scores them like lcb_report and
    `lahis audit` (off-target) reads them too, each run labelled by its model folder and mask."""
    from lahis_ctrl.cli import main

    for k, v in ENV_OFFLINE.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    _lm_eval(["--model", "lahis_hf", "--model_args", f"pretrained={tiny_dir},dtype=float32,max_length=512,"
              f"mask={masks['zero']}", "--tasks", "lcb_monolingual_ru,lcb_monolingual_en", "--device", "cpu",
              "--limit", "2", "--gen_kwargs", "max_gen_toks=12", "--output_path", str(out), "--log_samples",
              "--metadata", json.dumps({"data_dir": str(lcb_copy)})], monkeypatch)
    assert f"lahis_hf: mask {masks['zero']} applied by fold" in capsys.readouterr().err
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert results["results"]["lcb_monolingual_ru"]["lpr,none"] is not None
    capsys.readouterr()
    assert main(["audit", str(out), "--metric", "lcb", "--plot", "false"]) == 0
    report = json.loads((out / "lcb-audit" / "audit.json").read_text())
    (entry,) = report["lcb"]["models"]
    samples = [json.loads(line) for f in sorted(out.rglob("samples_*.jsonl")) for line in f.open()]
    run = next(out.rglob("samples_*.jsonl")).parent.name
    assert entry["model"] == f"{run} mask={masks['zero'].name}" and report["n"] == len(samples) == 4
    want = lcb_report([{"completion": s["filtered_resps"][0], **{k: s["doc"][k] for k in ("language", "source",
                                                                                          "task")}} for s in samples])
    got = entry["tasks"]["monolingual"]
    assert {k: got["per_language"][k]["lpr"] for k in ("en", "ru")} == \
        {k: want["models"][0]["tasks"]["monolingual"]["per_language"][k]["lpr"] for k in ("en", "ru")}
    lm_lpr = results["results"]["lcb_monolingual_ru"]["lpr,none"]
    if sum(g["n_scored"] for g in got["groups"] if g["language"] == "ru"):
        assert got["per_language"]["ru"]["lpr"] == lm_lpr
    else:  # nothing scorable (n = 0): lm-eval reports NaN with a warning, not the benchmark's empty-denominator 1.0
        assert math.isnan(lm_lpr)
    assert "monolingual: LPR" in capsys.readouterr().out
    assert main(["audit", str(out), "--plot", "false", "--out", str(tmp_path / "off")]) == 0
    off = json.loads((tmp_path / "off" / "audit.json").read_text())
    assert sorted((r["run"], r["group"], r["expected"]) for r in off["rows"]) == [
        (entry["model"], "lcb_monolingual_en", "en"), (entry["model"], "lcb_monolingual_ru", "ru")]
