"""lm-eval integration: lahis_hf, registration without imports, the task folder and the off-target metric.

Tiny random models and 5 hand-written XQuAD/NTREX-style items (short contexts keep generation fast);
the slow tests run Gemma 3 270M on the real XQuAD files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# one thread: the tiny models gain nothing from more, and the machines' 2 cores are shared
ENV_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": "1"}

# Five parallel items (same ids in both languages), SQuAD v1.1 layout.
ITEMS = [
    ("q1", "Berlin is the capital of Germany. It has about 3.7 million inhabitants.",
     "What is the capital of Germany?", "Berlin",
     "Berlin ist die Hauptstadt von Deutschland. Dort leben etwa 3,7 Millionen Menschen.",
     "Was ist die Hauptstadt von Deutschland?", "Berlin"),
    ("q2", "The Rhine flows from Switzerland to the North Sea.", "Where does the Rhine end?", "the North Sea",
     "Der Rhein fließt von der Schweiz bis in die Nordsee.", "Wo endet der Rhein?", "in die Nordsee"),
    ("q3", "Goethe wrote Faust over almost sixty years.", "Who wrote Faust?", "Goethe",
     "Goethe schrieb den Faust über fast sechzig Jahre.", "Wer schrieb den Faust?", "Goethe"),
    ("q4", "The Zugspitze is 2962 metres high.", "How high is the Zugspitze?", "2962 metres",
     "Die Zugspitze ist 2962 Meter hoch.", "Wie hoch ist die Zugspitze?", "2962 Meter"),
    ("q5", "Hamburg has the largest port in Germany.", "Which city has the largest port?", "Hamburg",
     "Hamburg hat den größten Hafen Deutschlands.", "Welche Stadt hat den größten Hafen?", "Hamburg"),
]
NTREX = [
    ("The weather was cold in Berlin today.", "Das Wetter war heute in Berlin kalt."),
    ("The government announced new taxes.", "Die Regierung kündigte neue Steuern an."),
    ("Many people visited the museum.", "Viele Menschen besuchten das Museum."),
    ("The train arrived two hours late.", "Der Zug kam zwei Stunden zu spät an."),
    ("Scientists found water on the planet.", "Wissenschaftler fanden Wasser auf dem Planeten."),
]


def _squad(items, en: bool) -> dict:
    paragraphs = []
    for qid, c_en, q_en, a_en, c_de, q_de, a_de in items:
        context, question, answer = (c_en, q_en, a_en) if en else (c_de, q_de, a_de)
        paragraphs.append({"context": context, "qas": [{"id": qid, "question": question, "answers": [
            {"text": answer, "answer_start": context.find(answer)}]}]})
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}


# one thread: the tiny models gain nothing from more, and the machines' 2 cores are shared (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    (d / "xquad").mkdir()
    (d / "xquad" / "xquad.en.json").write_text(json.dumps(_squad(ITEMS, True)), encoding="utf-8")
    (d / "xquad" / "xquad.de.json").write_text(json.dumps(_squad(ITEMS, False)), encoding="utf-8")
    (d / "ntrex128").mkdir()
    (d / "ntrex128" / "en.txt").write_text("\n".join(e for e, _ in NTREX) + "\n", encoding="utf-8")
    (d / "ntrex128" / "de.txt").write_text("\n".join(g for _, g in NTREX) + "\n", encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="module")
def masks(tmp_path_factory):
    from tiny import tiny_model

    from lahis_ctrl.core.mask import HeadMask

    d = tmp_path_factory.mktemp("masks")
    model = tiny_model("llama")
    ones = HeadMask.ones(model).save(d / "ones.safetensors")
    zero = HeadMask.from_heads(model, [(0, 0), (0, 1), (1, 2), (2, 3)], 0.0).save(d / "zero.safetensors")
    other = HeadMask.ones(tiny_model("gemma3")).save(d / "gemma3.safetensors")  # 4 layers, another model type
    return {"ones": ones, "zero": zero, "other": other}


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    from lahis_ctrl.integrations.lm_eval.runner import tasks_dir

    # only this package's tasks: indexing lm-eval's ~15k built-in YAMLs would take ~15 s on 2 cores
    return TaskManager(include_path=str(tasks_dir()), include_defaults=False)


def _evaluate(task_manager, tiny_dir, data_dir, monkeypatch, extra: str = "", tasks=("xquad_de",),
              gen_kwargs: str | None = "max_gen_toks=6"):
    import lm_eval

    import lahis_ctrl  # noqa: F401  (the documented way to make lahis_hf known in-process)

    monkeypatch.setenv("LAHIS_DATA_DIR", str(data_dir))
    return lm_eval.simple_evaluate(
        model="lahis_hf", model_args=f"pretrained={tiny_dir},dtype=float32,max_length=512{extra}",
        tasks=list(tasks), limit=5, device="cpu", gen_kwargs=gen_kwargs, bootstrap_iters=0,
        log_samples=True, task_manager=task_manager)


def _outputs(result, task="xquad_de") -> list[str]:
    return [s["resps"][0][0] for s in result["samples"][task]]


def _metrics(result, task="xquad_de") -> dict:
    return {k: v for k, v in result["results"][task].items() if k.endswith(",none") and "_stderr" not in k}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)) or x == y
        for x, y in ((a[k], b[k]) for k in a))


# ------------------------------------------------------------------------------------------ lahis_hf
def test_identity_mask_is_exactly_unmasked_and_zeroing_heads_changes_outputs(task_manager, tiny_dir, local_data,
                                                                            masks, monkeypatch):
    plain = _evaluate(task_manager, tiny_dir, local_data, monkeypatch)
    ones = _evaluate(task_manager, tiny_dir, local_data, monkeypatch, f",mask={masks['ones']}")
    zero_fold = _evaluate(task_manager, tiny_dir, local_data, monkeypatch, f",mask={masks['zero']}")
    zero_hooks = _evaluate(task_manager, tiny_dir, local_data, monkeypatch, f",mask={masks['zero']},fold=false")

    assert _outputs(ones) == _outputs(plain)
    assert _same(_metrics(ones), _metrics(plain))
    assert _outputs(zero_fold) != _outputs(plain)
    # zeroing is exact both ways (0 * x), so folded weights and hooks generate the same tokens
    assert _outputs(zero_hooks) == _outputs(zero_fold)
    info = zero_fold["config"]["lahis_mask"]
    assert info["mode"] == "fold" and info["changed_heads"] == [[0, 0], [0, 1], [1, 2], [2, 3]]
    assert zero_hooks["config"]["lahis_mask"]["mode"] == "hooks"
    assert ones["config"]["lahis_mask"]["mode"] == "identity" and plain["config"]["lahis_mask"] is None


def test_heads_scale_matches_the_same_mask_file(task_manager, tiny_dir, local_data, masks, monkeypatch, tmp_path):
    from tiny import tiny_model

    from lahis_ctrl.core.mask import HeadMask

    mask = HeadMask.from_heads(tiny_model("llama"), [(0, 1), (2, 3)], 0.0).save(tmp_path / "m.safetensors")
    by_heads = _evaluate(task_manager, tiny_dir, local_data, monkeypatch, ",heads=0:1+2:3,scale=0")
    by_file = _evaluate(task_manager, tiny_dir, local_data, monkeypatch, f",mask={mask}")
    assert _outputs(by_heads) == _outputs(by_file)
    assert by_heads["config"]["lahis_mask"]["changed_heads"] == [[0, 1], [2, 3]]
    # the results say which mask they measured by its content, whatever file or arguments it came from
    import hashlib

    values = HeadMask.load(mask).values.numpy().astype("<f4")
    expected = hashlib.sha256(f"{values.shape[0]}x{values.shape[1]}:".encode() + values.tobytes()).hexdigest()
    assert by_heads["config"]["lahis_mask"]["sha256"] == by_file["config"]["lahis_mask"]["sha256"] == expected


def test_mask_for_another_model_fails_with_the_validate_message(tiny_dir, masks, monkeypatch, capsys):
    from lahis_ctrl.core.errors import LahisError, MaskMismatchError
    from lahis_ctrl.integrations.lm_eval.models import LahisHFLM

    with pytest.raises(MaskMismatchError, match="shape mismatch: mask for gemma3"):
        LahisHFLM(pretrained=str(tiny_dir), mask=str(masks["other"]), device="cpu", dtype="float32")
    with pytest.raises(LahisError, match="file not found"):
        LahisHFLM(pretrained=str(tiny_dir), mask="/nonexistent/m.safetensors", device="cpu")
    with pytest.raises(LahisError, match="outside this llama model"):
        LahisHFLM(pretrained=str(tiny_dir), heads="7:0", device="cpu")
    # under the lm_eval console script the same error ends the run with one line, no traceback
    monkeypatch.setitem(sys.modules, "lm_eval.__main__", sys.modules["lm_eval"])
    with pytest.raises(SystemExit) as exc:
        LahisHFLM(pretrained=str(tiny_dir), mask=str(masks["other"]), device="cpu", dtype="float32")
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lahis_hf: error:")]
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("lahis_hf: error: shape mismatch")


def test_parse_heads(tmp_path):
    from lahis_ctrl.core.errors import LahisError
    from lahis_ctrl.integrations.lm_eval.models import parse_heads

    assert parse_heads("3:1+5:2") == [(3, 1), (5, 2)]
    assert parse_heads("3.1;5.2") == [(3, 1), (5, 2)]
    assert parse_heads([[0, 1], (2, 3)]) == [(0, 1), (2, 3)]
    assert parse_heads(None) == []
    (tmp_path / "l.json").write_text("[[1, 2], [3, 0]]")
    (tmp_path / "d.json").write_text('{"heads": [[1, 2]]}')
    (tmp_path / "per_lang.json").write_text('{"de": [[0, 3]], "zh": [[1, 1]]}')
    assert parse_heads(str(tmp_path / "l.json")) == [(1, 2), (3, 0)]
    assert parse_heads(str(tmp_path / "d.json")) == [(1, 2)]
    assert parse_heads(str(tmp_path / "per_lang.json"), heads_lang="zh") == [(1, 1)]
    with pytest.raises(LahisError, match="heads_lang"):
        parse_heads(str(tmp_path / "per_lang.json"))
    # the file `lahis heads --out` writes
    classification = {"languages": ["de", "zh"], "general": [{"layer": 2, "head": 0, "languages": ["de", "zh"]}],
                      "per_language": {"de": {"specific": [{"rank": 1, "layer": 1, "head": 3, "score": 0.5},
                                                           {"rank": 2, "layer": 0, "head": 2, "score": 0.1}]},
                                       "zh": {"specific": []}}}
    (tmp_path / "heads.json").write_text(json.dumps(classification))
    assert parse_heads(str(tmp_path / "heads.json"), heads_lang="de") == [(1, 3), (0, 2)]
    assert parse_heads(str(tmp_path / "heads.json"), heads_lang="general") == [(2, 0)]
    with pytest.raises(LahisError, match="heads_lang=<lang>"):
        parse_heads(str(tmp_path / "heads.json"))
    with pytest.raises(LahisError, match="layer:head"):
        parse_heads("3-1")
    with pytest.raises(LahisError, match="not found"):
        parse_heads(str(tmp_path / "missing.json"))


# ------------------------------------------------------------------------------------------ the lm_eval CLI
def test_lm_eval_cli_runs_every_task_family_and_writes_every_metric(tiny_dir, local_data, masks, tmp_path):
    """The issue's command, as a subprocess that imports nothing of ours: registration comes from the .pth."""
    out = tmp_path / "out"
    cmd = [str(Path(PY).with_name("lm_eval")), "--model", "lahis_hf",
           "--model_args", f"pretrained={tiny_dir},mask={masks['zero']},dtype=float32,max_length=512",
           "--tasks", "xquad_de,xquad_xling_de,ntrex_en_de", "--include_path", str(REPO / "tasks"),
           "--device", "cpu", "--limit", "5", "--gen_kwargs", "max_gen_toks=6", "--output_path", str(out),
           "--log_samples"]
    env = {**os.environ, **ENV_OFFLINE, "LAHIS_DATA_DIR": str(local_data), "DISABLE_MULTIPROC": "1"}
    env.pop("LAHIS_NO_LM_EVAL_HOOK", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    expected = {
        "xquad_de": {"exact_match", "f1", "contains", "off_target_rate", "off_target_share", "undetermined_share"},
        "xquad_xling_de": {"exact_match", "f1", "contains", "contains_context_lang", "off_target_rate",
                           "off_target_share", "undetermined_share"},
        "ntrex_en_de": {"chrf", "off_target_rate", "off_target_share", "undetermined_share"},
    }
    for task, metrics in expected.items():
        got = results["results"][task]
        assert {k.split(",")[0] for k in got if k.endswith(",none") and "_stderr" not in k} == metrics, task
        assert got["sample_len"] == 5
        for m in metrics:
            v = got[f"{m},none"]
            assert v is None or (isinstance(v, float) and (math.isnan(v) or v >= 0)), (task, m, v)
        samples = [json.loads(line) for line in next(out.rglob(f"samples_{task}_*.jsonl")).open()]
        assert len(samples) == 5
        for s in samples:  # per sample: decided -> 0/1 off-target, undecided -> NaN and counted apart
            assert (s["undetermined_share"] == 1.0) == (s["off_target_rate"] is None or math.isnan(s["off_target_rate"]))
    assert results["config"]["lahis_mask"]["mode"] == "fold"
    assert results["config"]["model"] == "lahis_hf"


# ------------------------------------------------------------------------------------------ registration
_PROBE = """
import sys
before = sorted(m for m in ("torch", "lm_eval", "lahis_ctrl", "transformers") if m in sys.modules)
if sys.argv[2] == "import":
    import lahis_ctrl
from lm_eval.api.registry import get_model, model_registry
raw = dict(model_registry.items()).get("lahis_hf")  # the lazy "module:Class" placeholder
# built-in models stay known (lm-eval imports its own model table only while the registry is empty)
builtin = "hf" in model_registry and "vllm" in model_registry
lazy = "lahis_ctrl.integrations.lm_eval.models" not in sys.modules
loaded = get_model("lahis_hf").__name__ if sys.argv[1] == "load" and raw is not None else None
print(before, raw, builtin, lazy, loaded, "lahis_vllm" in model_registry)
"""


def _probe(python: str, opt_out: bool, cwd, load: bool = False, import_first: bool = False) -> str:
    env = {**os.environ, **ENV_OFFLINE}
    env.pop("LAHIS_NO_LM_EVAL_HOOK", None)
    if opt_out:
        env["LAHIS_NO_LM_EVAL_HOOK"] = "1"
    argv = ["load" if load else "-", "import" if import_first else "-"]
    proc = subprocess.run([python, "-c", _PROBE, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_registration_without_importing_lahis_ctrl(tmp_path):
    # nothing heavy at start-up; the names appear with lm_eval's registry; the class loads on first use
    assert _probe(PY, False, tmp_path, load=True) == "[] lahis_ctrl.integrations.lm_eval.models:LahisHFLM True True LahisHFLM True"
    assert _probe(PY, True, tmp_path) == "[] None False True None False"
    # `import lahis_ctrl` registers the names whatever the opt-out says (an explicit opt-in), still lazily
    assert _probe(PY, True, tmp_path, import_first=True) == "[] lahis_ctrl.integrations.lm_eval.models:LahisHFLM True True None True"


def _build(kind: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(REPO / "build", ignore_errors=True)  # setuptools reuses build/lib: stale files would pass
    code = f"from setuptools import build_meta as b; print(b.build_{kind}({str(out)!r}))"
    proc = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_registration_in_regular_and_editable_installs(kind, tmp_path, tiny_dir, masks, local_data):
    """Install the package into a fresh venv (lm_eval and torch reachable through a path entry) and probe."""
    wheel = _build(kind, tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lahis_ctrl_lm_eval.pth" in names
    if kind == "wheel":
        assert "_lahis_register.py" in names and "lahis_ctrl/integrations/lm_eval/tasks/xquad/xquad_de.yaml" in names
        assert "lahis_ctrl/corpora/data/passages/en.txt" in names
        assert not any("__pycache__" in n for n in names)
    venv = tmp_path / "venv"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    import lm_eval

    # a plain path entry: makes lm_eval/torch importable without running the dev venv's own .pth files
    (site / "_deps.pth").write_text(str(Path(lm_eval.__file__).parents[1]) + "\n")
    # --target (not --prefix): pip then ignores what is installed in the running environment; with --prefix it
    # would uninstall the developer's own lahis-ctrl install first
    subprocess.run([PY, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    python = str(venv / "bin" / "python")
    assert _probe(python, False, tmp_path) == "[] lahis_ctrl.integrations.lm_eval.models:LahisHFLM True True None True"
    where = subprocess.run([python, "-c", "import lahis_ctrl.integrations.lm_eval.runner as c; print(c.tasks_dir())"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert (Path(where) / "xquad" / "xquad_de.yaml").is_file()
    if kind == "wheel":
        assert Path(where).is_relative_to(venv)
    # the entry points, `python -m lahis_ctrl` and every task's !function reference work from the install
    proc = subprocess.run([python, "-c", _ENTRY_PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **ENV_OFFLINE})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["main", "register", "functions-ok", "vllm-not-imported"], proc.stdout
    help_text = subprocess.run([python, "-m", "lahis_ctrl", "--help"], cwd=tmp_path, capture_output=True, text=True,
                               timeout=300, env={**os.environ, **ENV_OFFLINE})
    assert help_text.returncode == 0 and "reproduce" in help_text.stdout, help_text.stderr[-2000:]
    # the mission's command, verbatim: no --include_path; this project's xquad_de wins over lm-eval's built-in one
    # (which imports a module transformers 5 removed), and the opt-out brings the built-in one back
    command = [python, "-m", "lm_eval", "--model", "lahis_hf", "--model_args",
               f"pretrained={tiny_dir},mask={masks['zero']}", "--tasks", "xquad_de", "--limit", "2", "--device", "cpu",
               "--gen_kwargs", "max_gen_toks=4"]
    env = {**os.environ, **ENV_OFFLINE, "LAHIS_DATA_DIR": str(local_data)}
    env.pop("LAHIS_NO_LM_EVAL_HOOK", None)
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "|xquad_de|" in run.stdout and "contains" in run.stdout and "off_target_rate" in run.stdout
    plain = [python, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_dir}", *command[7:]]
    built_in = subprocess.run(plain, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**env, "LAHIS_NO_LM_EVAL_HOOK": "1"})
    assert built_in.returncode != 0 and "transformers.data.metrics" in built_in.stderr


_ENTRY_PROBE = r"""
import importlib, importlib.metadata as md, re, sys
from pathlib import Path
(script,) = [e for e in md.entry_points(group="console_scripts") if e.name == "lahis"]
(plugin,) = [e for e in md.entry_points(group="vllm.general_plugins") if e.name == "lahis_ctrl"]
print(script.load().__name__, plugin.load().__name__)
from lahis_ctrl.integrations.lm_eval.runner import tasks_dir
refs = set()
for y in Path(tasks_dir()).rglob("*"):
    if y.is_file() and (y.suffix == ".yaml" or y.name.endswith("_yaml")):
        refs.update(re.findall(r"!function\s+([\w.]+)", y.read_text()))
assert refs, "no !function references found"
for ref in sorted(refs):
    module, _, name = ref.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name)), ref
print("functions-ok", "vllm-not-imported" if "vllm" not in sys.modules else "vllm-imported")
"""


def test_task_manager_includes_this_projects_tasks_without_include_path(local_data, monkeypatch):
    """Registered by the .pth hook (or `import lahis_ctrl`): xquad_de and every glob of it resolve to this package's
    YAMLs; a user's own include_path still comes last (it wins), and include_defaults=False is left alone."""
    from lm_eval.tasks import TaskManager

    from lahis_ctrl.integrations.lm_eval.runner import tasks_dir

    ours = str(tasks_dir())
    tm = TaskManager()
    for name in ("xquad_de", "xquad_ar", "xquad", "ntrex_en_de"):
        assert str(tm.task_index[name].yaml_path).startswith(ours), name
    # `--tasks "xquad_*"` resolves to this package's tasks (the same names as lm-eval's, replaced)
    matched = tm.match_tasks(["xquad_*"])
    assert {"xquad_de", "xquad_xling_de", "xquad_lahis_de"} <= set(matched)
    mine = {p.stem for p in tasks_dir().rglob("*.yaml")}
    assert all(str(tm.task_index[name].yaml_path).startswith(ours) for name in matched if name in mine)
    assert "xquad_ca" in matched  # lm-eval's Catalan XQuAD, which this package does not have, still matches
    assert TaskManager(include_path=["/nonexistent-user-tasks"]).include_path == [ours, "/nonexistent-user-tasks"]
    assert TaskManager(include_path=ours, include_defaults=False).include_path == ours


# ------------------------------------------------------------------------------------------ which implementation
def test_results_say_which_implementation_produced_them(task_manager):
    """This package's xquad_<lang> replace lm-eval's built-ins of the same name: their version differs from the
    built-in's, and the task's metadata names the implementation (both are written into lm-eval's results)."""
    import lm_eval
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_constructor("!function", lambda loader, node: None)
    builtin = Path(lm_eval.__file__).parent / "tasks" / "xquad" / "xquad_common_yaml"
    if builtin.is_file():
        assert yaml.load(builtin.read_text(), Loader=_Loader)["metadata"]["version"] != "lahis-2.0"
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(task_manager.task_index["xquad_de"].yaml_path, resolve_func=False)  # includes resolved
    assert config["metadata"] == {"version": "lahis-2.0", "implementation": "lahis-ctrl"}


def test_lahis_eval_is_gone_and_says_what_to_run(capsys):
    from lahis_ctrl.cli import main

    assert main(["eval", "--tasks", "xquad_de", "--model_args", "pretrained=m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lm_eval --model lahis_hf --model_args pretrained=MODEL,mask=" in err[0]


# ------------------------------------------------------------------------------------------ tasks and data
def test_task_folder_has_every_task_and_group(task_manager):
    from lahis_ctrl.corpora.lcb import CROSSLINGUAL_LANGUAGES, MONOLINGUAL_LANGUAGES
    from lahis_ctrl.corpora.xquad import XQUAD_LANGS

    names = set(task_manager.all_tasks)
    others = [lang for lang in XQUAD_LANGS if lang != "en"]
    for fam, langs in (("xquad", XQUAD_LANGS), ("xquad_lahis", XQUAD_LANGS), ("xquad_xling", others),
                       ("ntrex_en", others), ("lcb_monolingual", MONOLINGUAL_LANGUAGES),
                       ("lcb_crosslingual", CROSSLINGUAL_LANGUAGES)):
        assert fam in names
        assert {f"{fam}_{lang}" for lang in langs} <= names
    assert "lcb" in names  # the group of the two LCB groups
    # nothing else: the folder holds no stray task
    assert len(names) == 4 + 12 + 12 + 11 + 11 + 3 + len(MONOLINGUAL_LANGUAGES) + len(CROSSLINGUAL_LANGUAGES)


def test_every_task_and_group_loads(task_manager, tmp_path, monkeypatch):
    """All 46 tasks build (YAML, includes, !function targets, loaders) on 5 local items per language."""
    from lahis_ctrl.integrations.lm_eval.task_utils import NTREX_LANGS
    from lahis_ctrl.corpora.xquad import XQUAD_LANGS

    (tmp_path / "ntrex128").mkdir()
    for lang in XQUAD_LANGS:  # the text is English/German everywhere: only the plumbing is under test here
        (tmp_path / f"xquad.{lang}.json").write_text(json.dumps(_squad(ITEMS, lang == "en")), encoding="utf-8")
    for lang in (*NTREX_LANGS, "en"):
        (tmp_path / "ntrex128" / f"{lang}.txt").write_text("\n".join(g for _, g in NTREX), encoding="utf-8")
    monkeypatch.setenv("LAHIS_DATA_DIR", str(tmp_path))
    loaded = task_manager.load(["xquad", "xquad_xling", "ntrex_en"])
    assert set(loaded["groups"]) == {"xquad", "xquad_xling", "ntrex_en"}
    tasks = loaded["tasks"]
    assert len(tasks) == 12 + 11 + 11
    for name, task in tasks.items():
        docs = list(task.eval_docs)
        lang = name.rsplit("_", 1)[1]
        assert len(docs) == 5 and docs[0]["lang"] == lang, name
        assert task.doc_to_text(docs[0]) and task.doc_to_target(docs[0]), name
    with pytest.raises(Exception, match="empty"):  # xquad_lahis needs items [390:1190]
        task_manager.load(["xquad_lahis_de"])


def test_prompts_are_lm_evals_builtin_xquad_prompts():
    import yaml
    from lm_eval.utils import apply_template

    import lm_eval
    from lahis_ctrl.integrations.lm_eval.task_utils import xquad_prompt
    from lahis_ctrl.corpora.xquad import XQUAD_LANGS

    builtin = Path(lm_eval.__file__).parent / "tasks" / "xquad"
    doc = {"context": "Ein Kontext mit {Klammern}.", "question": "Eine Frage?", "answers": {"text": ["x"]}}
    for lang in XQUAD_LANGS:
        template = yaml.safe_load((builtin / f"xquad_{lang}.yaml").read_text(encoding="utf-8"))["doc_to_text"]
        assert xquad_prompt({**doc, "lang": lang}) == apply_template(template, doc), lang


def test_datasets_from_the_offline_copy(shared_data, task_manager):
    from lahis_ctrl.integrations.lm_eval.task_utils import ntrex, xquad, xquad_xling
    from lahis_ctrl.corpora.xquad import load_xquad

    de = load_xquad("de", shared_data)
    full = xquad("de", data_dir=str(shared_data))["validation"]
    assert len(full) == 1190 and full[0]["lang"] == "de" and full[0]["id"] == de[0]["id"]
    test = xquad("de", start=390, end=1190, split="test", data_dir=str(shared_data))["test"]
    assert len(test) == 800 and test[0]["id"] == de[390]["id"] and test[-1]["id"] == de[1189]["id"]
    xl = xquad_xling("de", data_dir=str(shared_data))["validation"]
    en = {r["id"]: r for r in load_xquad("en", shared_data)}
    assert len(xl) == 1190
    for row in (xl[0], xl[700]):
        assert row["context"] == en[row["id"]]["context"]
        assert row["answers_context_lang"] == en[row["id"]]["answers"]["text"]
        assert row["question"] == next(r for r in de if r["id"] == row["id"])["question"]
    nt = ntrex("de", data_dir=str(shared_data))["test"]
    lines = (shared_data / "ntrex128" / "de.txt").read_text(encoding="utf-8").splitlines()
    assert len(nt) == 1997 and nt[5]["reference"] == lines[5] and nt[0]["target_name"] == "German"
    # language-ID settings from --metadata travel with every document to the off-target metric
    row = xquad("de", data_dir=str(shared_data), lid_min_confidence=0.7, lid_backend="langdetect")["validation"][0]
    assert row["lid_min_confidence"] == "0.7" and row["lid_backend"] == "langdetect" and row["lid_model"] is None


def test_xquad_lahis_is_the_papers_protocol(shared_data, task_manager, tiny_dir, monkeypatch):
    from tiny import tiny_tokenizer

    from lahis_ctrl.corpora.prompts import format_prompt
    from lahis_ctrl.corpora.xquad import load_xquad

    monkeypatch.setenv("LAHIS_DATA_DIR", str(shared_data))
    task = task_manager.load(["xquad_lahis_de"])["tasks"]["xquad_lahis_de"]
    docs = list(task.test_docs())
    rows = load_xquad("de", shared_data)
    assert len(docs) == 800 and docs[0]["id"] == rows[390]["id"]
    assert task.doc_to_text(docs[0]) == format_prompt(rows[390], "de", style="paper")
    assert task.config.generation_kwargs["max_gen_toks"] == 10 and task.config.generation_kwargs["until"] == []
    result = _evaluate(task_manager, tiny_dir, shared_data, monkeypatch, tasks=("xquad_lahis_de",), gen_kwargs=None)
    outputs = _outputs(result, "xquad_lahis_de")
    # no stop sequence: the random model runs to the 10-token budget
    assert len(outputs) == 5 and all(len(tiny_tokenizer()(o)["input_ids"]) >= 8 for o in outputs)
    assert {k.split(",")[0] for k in _metrics(result, "xquad_lahis_de")} == {"contains", "off_target_rate",
                                                                           "off_target_share", "undetermined_share"}


def test_task_loading_uses_the_data_dir(task_manager, local_data, monkeypatch):
    monkeypatch.setenv("LAHIS_DATA_DIR", str(local_data))
    tasks = task_manager.load(["xquad_de", "xquad_xling_de", "ntrex_en_de"])["tasks"]
    by_name = {t.config.task: t for t in tasks.values()}
    xq = list(by_name["xquad_de"].validation_docs())
    assert [d["id"] for d in xq] == [i[0] for i in ITEMS]
    assert by_name["xquad_de"].doc_to_text(xq[0]) == f"Kontext: {ITEMS[0][4]}\n\nFrage: {ITEMS[0][5]}\n\nAntwort:"
    xl = list(by_name["xquad_xling_de"].validation_docs())
    assert by_name["xquad_xling_de"].doc_to_text(xl[0]) == f"Kontext: {ITEMS[0][1]}\n\nFrage: {ITEMS[0][5]}\n\nAntwort:"
    nt = list(by_name["ntrex_en_de"].test_docs())
    assert by_name["ntrex_en_de"].doc_to_text(nt[0]) == f"English phrase: {NTREX[0][0]}\nGerman phrase:"
    assert by_name["ntrex_en_de"].doc_to_target(nt[0]) == NTREX[0][1]
    aggregation = by_name["xquad_de"].aggregation()
    from lm_eval.api.metrics import mean, nanmean

    assert aggregation["off_target_rate"] is nanmean and aggregation["undetermined_share"] is mean
    assert aggregation["off_target_share"] is mean


# ------------------------------------------------------------------------------------------ metrics
def _doc(lang="de", **kw):
    return {"answers": {"text": kw.pop("golds", ["x"])}, "lang": lang, **kw}


def test_squad_em_f1_on_official_examples():
    from lahis_ctrl.integrations.lm_eval.task_utils import process_xquad

    # SQuAD v1.1 dev, "Super Bowl 50": gold answers as in the official file
    golds = ["Denver Broncos", "Denver Broncos", "Denver Broncos"]
    r = process_xquad(_doc("en", golds=golds), [" The Denver Broncos."])
    assert r["exact_match"] == 1.0 and r["f1"] == 1.0 and r["contains"] == 1.0
    r = process_xquad(_doc("en", golds=golds), [" Denver"])
    assert r["exact_match"] == 0.0 and r["f1"] == pytest.approx(2 / 3) and r["contains"] == 0.0
    golds = ["Santa Clara, California", "Levi's Stadium",
             "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California."]
    r = process_xquad(_doc("en", golds=golds), [" Santa Clara"])
    # best gold "Santa Clara, California": P = 2/2, R = 2/3
    assert r["exact_match"] == 0.0 and r["f1"] == pytest.approx(0.8) and r["contains"] == 0.0
    r = process_xquad(_doc("en", golds=golds), [" It was at Levi's Stadium."])
    # "it was at levis stadium" vs "levis stadium": P = 2/5, R = 1
    assert r["exact_match"] == 0.0 and r["f1"] == pytest.approx(2 * 0.4 / 1.4) and r["contains"] == 1.0


def test_off_target_on_known_sentences_empty_and_digits():
    from lahis_ctrl.integrations.lm_eval.task_utils import off_target, process_translation, process_xquad_lahis

    assert off_target("Der Hund schläft den ganzen Tag auf dem Sofa.", "de") == {
        "off_target_rate": 0.0, "off_target_share": 0.0, "undetermined_share": 0.0}
    assert off_target("The dog sleeps on the sofa all day long.", "de") == {
        "off_target_rate": 1.0, "off_target_share": 1.0, "undetermined_share": 0.0}
    assert off_target("Собака спит на диване весь день.", "ru")["off_target_rate"] == 0.0
    assert off_target("北京是中国的首都，也是一座历史悠久的城市。", "zh")["off_target_rate"] == 0.0
    for text in ("", "   ", "1234", "3,7 %", "!!!"):
        r = off_target(text, "de")
        assert math.isnan(r["off_target_rate"]) and r["undetermined_share"] == 1.0 and r["off_target_share"] == 0.0, text
    # settings from the task metadata travel in the document: a length floor makes any output undecided
    r = process_xquad_lahis(_doc("de", golds=["Hund"], lid_min_chars="1000"), ["Der Hund schläft den ganzen Tag."])
    assert r["contains"] == 1.0 and math.isnan(r["off_target_rate"]) and r["undetermined_share"] == 1.0
    r = process_translation({"reference": "Das Wetter war kalt.", "lang": "de"}, [" The weather was cold.\n"])
    assert r["chrf"] == ("Das Wetter war kalt.", "The weather was cold.") and r["off_target_rate"] == 1.0


def test_off_target_aggregation_counts_only_decided_outputs():
    from lm_eval.api.metrics import mean, nanmean

    from lahis_ctrl.integrations.lm_eval.task_utils import off_target

    outputs = ["Das ist ein deutscher Satz über das Wetter.", "This sentence is written in English.",
               "Noch ein Satz auf Deutsch, ganz ohne Zweifel.", "42", ""]
    rows = [off_target(o, "de") for o in outputs]
    assert nanmean([r["off_target_rate"] for r in rows]) == pytest.approx(1 / 3)
    assert mean([r["undetermined_share"] for r in rows]) == pytest.approx(2 / 5)
    # the same outputs counted among all of them: 1 off-target of 5 (lahis audit's off-target share)
    assert mean([r["off_target_share"] for r in rows]) == pytest.approx(1 / 5)


# ------------------------------------------------------------------------------------------ slow: Gemma 3 270M
@pytest.mark.slow
def test_gemma_xquad_de_and_xling_de_end_to_end(gemma, shared_data, monkeypatch):
    """Gemma 3 270M through lm-eval (in-process, reusing the session's loaded model) on 20 real items each."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lahis_ctrl.integrations.lm_eval.runner import tasks_dir
    from lahis_ctrl.integrations.lm_eval.models import LahisHFLM

    model, tok = gemma
    monkeypatch.setenv("LAHIS_DATA_DIR", str(shared_data))
    lm = LahisHFLM(pretrained=model, tokenizer=tok, batch_size=4)
    result = lm_eval.simple_evaluate(model=lm, tasks=["xquad_de", "xquad_xling_de"], limit=20,
                                     gen_kwargs="max_gen_toks=16", bootstrap_iters=0, log_samples=True,
                                     task_manager=TaskManager(include_path=str(tasks_dir()), include_defaults=False))
    results = result["results"]
    for task in ("xquad_de", "xquad_xling_de"):
        print(task, {k.split(",")[0]: round(float(v), 3) for k, v in results[task].items()
                     if k.endswith(",none") and "_stderr" not in k})
        for s in result["samples"][task][:3]:
            print("   ", repr(s["resps"][0][0]), "| gold:", s["doc"]["answers"]["text"][0])
    de, xl = results["xquad_de"], results["xquad_xling_de"]
    assert de["sample_len"] == 20 and xl["sample_len"] == 20
    # a working prompt/target/metric pipeline: the 270M base model finds some answers in a German context
    assert de["contains,none"] > 0 and de["f1,none"] > 0
    # the point of xquad_xling: with an English context, more of the decided answers are not German
    assert xl["off_target_rate,none"] > de["off_target_rate,none"]
    for r in (de, xl):
        assert 0.0 <= r["undetermined_share,none"] <= 1.0
