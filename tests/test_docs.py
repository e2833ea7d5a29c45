"""The docs run as written. Every command block (```bash / sh / shell / console) and Python block of README.md and
docs/*.md is found here (new files and blocks included, whoever writes them) and run, in order, in one working
folder per file: a clone's configs/ and the user files a page names, with only the model and the data substituted
(a tiny random model of Gemma 3 270M's head layout for every model; small copies of ../shared/data for the data;
soft masks trained on 8 items, lm-eval runs cut to 2 documents of 8 tokens). A command that cannot run here is in SKIP below, with the reason; a SKIP entry
that matches no command fails, so the list cannot go stale.

`lahis` runs in this process through its own entry point (`lahis_ctrl.cli.main`), `lm_eval` through lm-eval's own
command line (HarnessCLI), Python blocks through exec (a page's blocks in one session, as a reader runs them); each command must exit 0 (1 only where the page documents a
failing gate, `--max_off_target`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))
COMMAND_LANGS = {"bash", "sh", "shell", "console"}

# (regex searched in a command, or in a Python block's code; why it cannot run in the test suite)
SKIP = [
    (r"^make (demo|test|reproduce)\b", "runs the whole demo (the real Gemma 3 270M) or the suite itself"),
    (r"^pip install", "installs packages: the suite runs inside the installed venv"),
    (r"^hf auth login|HF_TOKEN", "logs in to the Hugging Face Hub, which the suite does not reach"),
    (r"^lahis push\b|\.push_to_hub\(", "uploads to the Hub (tests/test_hub.py runs it against an offline Hub cache)"),
    (r"HeadMask\.load\(\"org/", "reads a mask from the Hub (tests/test_hub.py: references through an offline cache)"),
    (r"--nproc-per-node 8|--num_processes 8", "8 GPUs (tests/test_distributed.py runs torchrun with 2 CPU ranks)"),
    (r"configs/lahis-(aya-23-8b|llama-3\.2-3b|mistral-7b)\.yaml", "a 3-8B hub model and Wikipedia from the hub"),
    (r"^lahis reproduce --config configs/reproduce-",
     "the paper's experiments: ~1.5 h on a CPU, or paper scale on a GPU (tests/test_reproduce.py runs the pipeline "
     "on tests/data/reproduce-tiny.yaml)"),
    (r"benchmarks/bench_", "a benchmark: minutes of measurement"),
    (r"lid\.176\.bin", "lid.176.bin (126 MB) is fetched by hand"),
    (r"^vllm serve|vllm\.entrypoints|^curl |from vllm|--model lahis_vllm|set_head_mask\(llm",
     "vLLM: tested in its own venv (tests/test_vllm*.py)"),
    (r"--apply_chat_template", "needs a chat model (a tokenizer with a chat template)"),
    (r"PeftModel\.from_pretrained\(base_model", "a fragment: base_model is a model you loaded"),
]
# lm-eval runs here see a few documents each, a few tokens each (a random model rarely stops by itself)
LM_EVAL_LIMIT = 2
LM_EVAL_GEN = "max_gen_toks=8"
# soft masks train on this many items of the train split (the steps, not the commands, are what cost minutes)
TRAIN_ITEMS = 8
MODEL_COMMANDS = {"score", "ppl", "train-mask", "evaluate", "export", "demo", "reproduce"}
GATES = ("--max_off_target", "--max-off-target")


@dataclass
class Step:
    doc: str
    line: int
    kind: str  # "command" or "python"
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: str) -> list[tuple[str, int, str]]:
    """(language, line of the first content line, text) of every fenced block."""
    out, lang, start, lines = [], None, 0, []
    for no, line in enumerate((ROOT / doc).read_text(encoding="utf-8").splitlines(), 1):
        m = re.match(r"^```\s*([\w-]*)\s*$", line)
        if m and lang is None:
            lang, start, lines = m.group(1).lower(), no + 1, []
        elif line.startswith("```") and lang is not None:
            out.append((lang, start, "\n".join(lines)))
            lang = None
        elif lang is not None:
            lines.append(line)
    return out


def steps(doc: str) -> list[Step]:
    """The commands (continuations joined, comments dropped, `&&` split) and Python blocks of a page, in order."""
    found = []
    for lang, start, text in blocks(doc):
        if lang == "python":
            found.append(Step(doc, start, "python", text))
        elif lang in COMMAND_LANGS:
            joined, first = "", None
            for offset, line in enumerate(text.splitlines()):
                if first is None:
                    first = start + offset
                joined += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
                if line.rstrip().endswith("\\"):
                    continue
                words = shlex.split(joined, comments=True)
                for part in " ".join(shlex.quote(w) if w != "&&" else "&&" for w in words).split(" && "):
                    if part.strip():
                        found.append(Step(doc, first, "command", part.strip()))
                joined, first = "", None
    return found


def skip_reason(step: Step) -> str | None:
    return next((why for pattern, why in SKIP if re.search(pattern, step.text, re.M)), None)


# ------------------------------------------------------------------------------------------------ the world
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model with Gemma 3 270M's head layout (18 layers x 4 heads, 1 KV head), small copies of the offline
    data, and the user files the pages name (masks, generations, benchmark outputs, lm-eval samples)."""
    import torch
    from conftest import data_dir
    from tiny import tiny_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    shared_data = data_dir()
    if shared_data is None:
        pytest.skip("LAHIS_DATA_DIR is not set (the README's test command sets it to ../shared/data)")
    root = tmp_path_factory.mktemp("docs")
    model_dir = root / "tiny-gemma-layout"
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=18,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)

    data = root / "data"  # ../shared/data, cut down: enough items for the reference splits, a few of everything
    (data / "xquad").mkdir(parents=True)
    for f in sorted((shared_data / "xquad").glob("xquad.*.json")):
        raw = json.loads(f.read_text(encoding="utf-8"))
        # the first 396 questions (train items [0:390], 6 held-out test items), each with the sentence around its
        # answer as its context: prompts of tens of tokens instead of a thousand
        paragraphs = []
        for article in raw["data"]:
            for p in article["paragraphs"]:
                for qa in p["qas"]:
                    answer = qa["answers"][0]
                    start = max(0, answer["answer_start"] - 40)
                    context = p["context"][start:answer["answer_start"] + len(answer["text"]) + 40]
                    paragraphs.append({"context": context, "qas": [{**qa, "answers": [
                        {"text": a["text"], "answer_start": a["answer_start"] - start} for a in qa["answers"][:1]]}]})
        (data / "xquad" / f.name).write_text(json.dumps({"version": raw.get("version"), "data": [
            {"title": "docs", "paragraphs": paragraphs[:396]}]}), encoding="utf-8")
    (data / "ntrex128").mkdir()
    for f in sorted((shared_data / "ntrex128").glob("*.txt")):
        (data / "ntrex128" / f.name).write_text("\n".join(f.read_text(encoding="utf-8").splitlines()[:60]) + "\n",
                                                encoding="utf-8")
    lcb = shared_data / "lcb"
    for f in lcb.rglob("*"):
        if f.is_file():
            target = data / "lcb" / f.relative_to(lcb)
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix == ".csv":  # the header and 3 prompts (records: a prompt may span lines)
                import csv

                with f.open(encoding="utf-8", newline="") as src, target.open("w", encoding="utf-8", newline="") as dst:
                    reader, writer = csv.reader(src), csv.writer(dst)
                    for i, record in zip(range(4), reader):
                        writer.writerow(record)
            else:
                shutil.copy(f, target)
    return {"root": root, "model": model_dir, "data": data, "model_obj": model}


def _given(world, cwd: Path) -> None:
    """The files the pages name as the user's own: masks for the model, generations, benchmark outputs, samples."""
    from test_audit import LCB_ROWS, evaluate_rows, write_jsonl, write_lcb_csv

    from lahis_ctrl.core.mask import HeadMask

    mask = HeadMask.from_heads(world["model_obj"], [(7, 0), (3, 1)], 0.0, language="de")
    for name in ("m.safetensors", "de.safetensors", "de_mask.safetensors"):
        mask.save(cwd / name)
    rows = evaluate_rows()
    (cwd / "runs" / "eval-de").mkdir(parents=True)
    write_jsonl(cwd / "runs" / "eval-de" / "examples.jsonl", rows)
    for folder, mask_name in (("base", "baseline"), ("mask_de", "mask_de")):
        (cwd / "runs" / folder).mkdir(parents=True)
        write_jsonl(cwd / "runs" / folder / "examples.jsonl", [r for r in rows if r["mask"] == mask_name])
    gens = [r for r in rows if r["mask"] == "baseline"]
    write_jsonl(cwd / "gens.jsonl", [{"output": {"text": r["generation"]}, "meta": {"lang": r["lang"]}} for r in gens])
    (cwd / "gens.txt").write_text("\n".join(r["generation"] for r in gens if r["lang"] == "de") + "\n",
                                  encoding="utf-8")
    with (cwd / "gens.csv").open("w", encoding="utf-8", newline="") as f:
        import csv

        w = csv.writer(f)
        w.writerow(["completion", "language"])
        w.writerows([(r["generation"], r["lang"]) for r in gens])
    (cwd / "outputs").mkdir()
    for name in ("model.csv", "command-r-plus.csv"):
        write_lcb_csv(cwd / "outputs" / name, LCB_ROWS)
    shutil.copytree(ROOT / "tests" / "data" / "lm_eval_samples", cwd / "runs" / "lm-eval")
    run = cwd / "runs" / "lcb" / "earlier-run"
    run.mkdir(parents=True)
    samples = [{"doc_id": i, "doc": {"prompt": "p", "language": lang, "source": src, "task": task},
                "filtered_resps": [text], "filter": "none"}
               for i, (_, text, task, src, lang) in enumerate(r for r in LCB_ROWS if r[2] == "monolingual")]
    write_jsonl(run / "samples_lcb_monolingual_fr_2026-12-01T10-00-00.000001.jsonl", samples)


# ------------------------------------------------------------------------------------------------ running
def _substitute(words: list[str], world) -> list[str]:
    data, model = str(world["data"]), str(world["model"])
    words = [w.replace("../shared/data", data) for w in words]
    if words[0] == "lahis":
        args = words[1:]
        cmd = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
        if cmd is not None and args[cmd] == "info" and cmd + 1 < len(args):
            args[cmd + 1] = model
        elif cmd is not None and args[cmd] in MODEL_COMMANDS:
            if "--model" in args:
                args[args.index("--model") + 1] = model
            else:
                args += ["--model", model]
            if args[cmd] == "train-mask" and "--train_size" not in args:
                args += ["--train_size", str(TRAIN_ITEMS)]
        return ["lahis", *args]
    if words[0] == "lm_eval":
        words = [re.sub(r"pretrained=[^,]*", f"pretrained={model}", w) for w in words]
        if "--limit" in words:
            words[words.index("--limit") + 1] = str(LM_EVAL_LIMIT)
        else:
            words += ["--limit", str(LM_EVAL_LIMIT)]
        if "--device" not in words:
            words += ["--device", "cpu"]
        if "--gen_kwargs" not in words:
            words += ["--gen_kwargs", LM_EVAL_GEN]
    return words


def _python_source(code: str, world) -> str:
    model, data = repr(str(world["model"])), str(world["data"])
    code = re.sub(r"""(["'])gemma-3-270m\1""", model, code)
    code = code.replace("../shared/data", data).replace("pretrained=M", f"pretrained={world['model']}")
    code = re.sub(r"\brows=train\b", f"rows=train[:{TRAIN_ITEMS}]", code)
    return code.replace("simple_evaluate(", f"simple_evaluate(limit={LM_EVAL_LIMIT}, gen_kwargs={LM_EVAL_GEN!r}, "
                                             "device='cpu', ")


def _run(step: Step, world, monkeypatch, namespace: dict) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if step.kind == "python":  # a page's Python blocks share one session, as a reader's would
            exec(compile(_python_source(step.text, world), step.where, "exec"), namespace)
            return 0, out.getvalue() + err.getvalue()
        words = _substitute(shlex.split(step.text), world)
        if words[0] == "lahis":
            from lahis_ctrl.cli import main

            code = main(words[1:])
        elif words[0] == "lm_eval":
            from lm_eval._cli.harness import HarnessCLI

            monkeypatch.setattr(sys, "argv", ["lm_eval", *words[1:]])
            cli = HarnessCLI()
            cli.execute(cli.parse_args())
            code = 0
        else:
            raise AssertionError(f"{step.where}: `{words[0]}` is a command this test cannot run: run it here, or add "
                                 "the command to SKIP with the reason")
    return code, out.getvalue() + err.getvalue()


_TASK_INDEX: dict = {}


def _one_task_index(monkeypatch) -> None:
    """lm-eval indexes its ~15k task YAMLs for every run (~15-50 s on 2 shared cores): here once per set of folders."""
    from lm_eval.tasks._index import TaskIndex

    build = TaskIndex.build  # a staticmethod: build(paths, *, resolve_includes)

    def cached(paths, **kwargs):
        paths = list(paths)
        key = (tuple(str(p) for p in paths), tuple(sorted(kwargs.items())))
        if key not in _TASK_INDEX:
            _TASK_INDEX[key] = build(paths, **kwargs)
        return dict(_TASK_INDEX[key])

    monkeypatch.setattr(TaskIndex, "build", staticmethod(cached))


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_every_command_block_runs(doc, world, tmp_path, monkeypatch):
    found = steps(doc)
    if not found:
        pytest.skip(f"{doc} has no command or Python block")
    cwd = tmp_path / "clone"
    cwd.mkdir()
    shutil.copytree(ROOT / "configs", cwd / "configs")
    _given(world, cwd)
    monkeypatch.chdir(cwd)
    _one_task_index(monkeypatch)
    for key, value in {"LAHIS_DATA_DIR": str(world["data"]), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                       "TOKENIZERS_PARALLELISM": "false", "LAHIS_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    ran, skipped, namespace, timings = 0, [], {"__name__": "__main__"}, []
    for step in found:
        reason = skip_reason(step)
        if reason is not None:
            skipped.append(f"{step.where}: {step.text[:70]} -- {reason}")
            continue
        started = time.perf_counter()
        code, output = _run(step, world, monkeypatch, namespace)
        timings.append(f"{time.perf_counter() - started:6.1f} s  {step.where}: {step.text[:60]}")
        if os.environ.get("LAHIS_DOCS_TRACE"):
            print(timings[-1], file=sys.__stderr__, flush=True)
        allowed = {0, 1} if any(g in step.text for g in GATES) else {0}
        assert code in allowed, f"{step.where}: `{step.text}` exited {code}:\n{output[-3000:]}"
        ran += 1
    print(f"{doc}: {ran} ran, {len(skipped)} not run here:\n  " + "\n  ".join(skipped) + "\n  " +
          "\n  ".join(timings))


def test_every_skip_entry_is_used_and_no_command_hides_in_an_unmarked_block():
    every = [s for doc in DOCS for s in steps(doc)]
    for pattern, why in SKIP:
        assert any(re.search(pattern, s.text, re.M) for s in every), f"SKIP entry matches nothing: {pattern} ({why})"
    for doc in DOCS:
        for lang, start, text in blocks(doc):
            if lang in COMMAND_LANGS | {"python"}:
                continue
            for offset, line in enumerate(text.splitlines()):
                assert not re.match(r"^\s*(lahis|lm_eval|torchrun|python|pip|vllm) ", line), (
                    f"{doc}:{start + offset}: a command in a block not marked ```bash: mark it, so this test runs it")


def test_the_steps_are_found_as_written():
    """The parser of this test: continuations, comments, `&&`, quotes."""
    assert [s.text for s in steps("README.md") if "lahis heads" in s.text or "lahis plot" in s.text][:2] == [
        "lahis heads runs/scores/gemma-3-270m --out runs/heads.json",
        "lahis plot runs/scores/gemma-3-270m --out runs/plots"]
    ppl = next(s for s in steps("README.md") if s.text.startswith("lahis ppl"))
    assert ppl.text.endswith("--random_trials 5 --out runs/ppl") and "#" not in ppl.text
    lm = next(s for s in steps("README.md") if s.text.startswith("lm_eval") and "--log_samples" in s.text)
    assert """'{"data_dir": "../shared/data"}'""" in lm.text
