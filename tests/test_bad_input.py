"""Bad input and faults, by kind: each case runs a real `lahis` command in a subprocess and asserts exit status 2,
exactly one line on stderr, no traceback, and nothing written or changed in the folders it was given.

Kinds: numeric options out of range; inconsistent cross-checks (a score file of another language, an
architecture override that contradicts the model or names one module for every layer, a length beyond the
model's positions); files that are missing, not UTF-8, UTF-16 or binary; an output that is a file; models
without a config or a tokenizer; absurd mask scales, exports that would overflow their dtype, masking a
checkpoint that already has a mask folded in, exporting onto the source; unknown lm-eval tasks; broken README
markers; a second run on an output another live run holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, its masks and scores, a folded export, and input files of every bad kind."""
    import torch
    from tiny import save_tiny, tiny_model

    from lahis_ctrl.core.export import export_folded
    from lahis_ctrl.core.mask import HeadMask
    from lahis_ctrl.lahis.scores import HeadScores

    d = tmp_path_factory.mktemp("bad")
    model_dir = save_tiny(d / "tiny", "llama")
    model = tiny_model("llama")
    HeadMask.from_heads(model, [(0, 1)], 0.0, language="de").save(d / "mask.safetensors")
    HeadMask.from_heads(model, [(0, 1)], 1e6).save(d / "huge.safetensors")
    HeadMask.from_heads(model, [(0, 1)], -1.0).save(d / "negative.safetensors")
    (d / "strings.json").write_text(json.dumps({**json.loads(json.dumps(HeadMask.ones(model).facts())),
                                                "format": "lahis-head-mask/1",
                                                "mask": [[1, 1, "x", 1], [1, 1, 1, 1], [1, 1, 1, 1]]}))
    v = torch.rand(3, 4)
    facts = dict(model_type="llama", head_dim=16, model_name=str(model_dir), num_kv_heads=2)
    HeadScores(v, v, torch.ones(3, 4), language="en", num_texts=1, **facts).save(d / "en.safetensors")
    from tiny import tiny_tokenizer

    export_folded(model, tiny_tokenizer(), HeadMask.from_heads(model, [(1, 2)], 0.0), d / "folded")
    no_tok = d / "no_tokenizer"
    model.save_pretrained(no_tok)
    (d / "latin1.txt").write_bytes("Der Bär läuft über die Straße.\n".encode("latin-1"))
    (d / "utf16.txt").write_text("The fox jumps over the dog.\n", encoding="utf-16")
    (d / "binary.txt").write_bytes(b"\x00\x01\x02binary\x00")
    (d / "a_file").write_text("not a folder\n")
    (d / "README.md").write_text("# mine\n<!-- lahis reproduce: start -->\nkeep my text\n")
    return d


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lahis_ctrl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env or ENV)


CASES = [
    # (id, argv with {d} for the fixture folder, a phrase the one line must contain)
    ("batch_size 0", ["ppl", "{d}/en.safetensors", "--model", "{d}/tiny", "--batch_size", "0", "--out", "{d}/o"],
     "--batch_size must be an integer > 0"),
    ("negative lr", ["train-mask", "--lang", "de", "--model", "{d}/tiny", "--pick", "random", "--lr", "-1",
                     "--out", "{d}/m.safetensors"], "--lr must be a number > 0"),
    ("zero epochs", ["train-mask", "--lang", "de", "--model", "{d}/tiny", "--pick", "random", "--epochs", "0",
                     "--out", "{d}/m.safetensors"], "--epochs must be an integer > 0"),
    ("zero random draws", ["ppl", "{d}/en.safetensors", "--model", "{d}/tiny", "--random_trials", "0",
                           "--out", "{d}/o"], "--random_trials must be an integer > 0"),
    ("nested range", ["reproduce", "--model", "{d}/tiny", "--out", "{d}/o", "--xquad.test_items", "0"],
     "--xquad.test_items must be an integer > 0"),
    ("share above 1", ["train-mask", "--lang", "de", "--model", "{d}/tiny", "--pick", "random", "--head_share", "2",
                       "--out", "{d}/m.safetensors"], "--head_share must be a number > 0.0 and <= 1.0"),
    ("scores of another language", ["train-mask", "--lang", "de", "--model", "{d}/tiny", "--scores",
                                    "{d}/en.safetensors", "--out", "{d}/m.safetensors"], "scores of 'en', not 'de'"),
    ("override without {layer}", ["info", "{d}/tiny", "--arch", '{"o_proj": "model.layers.0.self_attn.o_proj"}'],
     "no '{layer}' placeholder"),
    ("override contradicts config", ["info", "{d}/tiny", "--arch",
                                     '{"o_proj": "model.layers.{layer}.self_attn.o_proj", "num_heads": 8}'],
     "contradicts the model's config"),
    ("override names q_proj on a known model", ["info", "{d}/tiny", "--arch",
                                                '{"o_proj": "model.layers.{layer}.self_attn.q_proj"}'],
     "model_type 'llama' needs no override"),
    ("override names mlp on a known model", ["score", "--model", "{d}/tiny", "--languages", "en", "--max_length", "16",
                                             "--out", "{d}/o", "--arch", '{"o_proj": "model.layers.{layer}.mlp.down_proj"}'],
     "whose input is not the heads' outputs"),
    ("length beyond positions", ["ppl", "{d}/en.safetensors", "--model", "{d}/tiny", "--max_length", "100000",
                                 "--out", "{d}/o"], "longer than the model's 256 positions"),
    ("missing model", ["info", "{d}/nowhere"], "could not"),
    ("model without tokenizer", ["evaluate", "--lang", "en", "--model", "{d}/no_tokenizer", "--data", "embedded",
                                 "--limit", "1", "--out", "{d}/o"], "tokenizer"),
    ("latin-1 corpus", ["ppl", "{d}/en.safetensors", "--model", "{d}/tiny", "--source", "{d}/latin1.txt",
                        "--max_length", "32", "--out", "{d}/o"], "is not UTF-8: byte 0xe4 at line 1, column 6"),
    ("utf-16 corpus", ["ppl", "{d}/en.safetensors", "--model", "{d}/tiny", "--source", "{d}/utf16.txt",
                       "--max_length", "32", "--out", "{d}/o"], "is UTF-16 text"),
    ("binary corpus", ["ppl", "{d}/en.safetensors", "--model", "{d}/tiny", "--source", "{d}/binary.txt",
                       "--max_length", "32", "--out", "{d}/o"], "binary file"),
    ("latin-1 audit input", ["audit", "{d}/latin1.txt", "--expected", "de", "--out", "{d}/o"],
     "is not UTF-8: byte 0xe4 at line 1, column 6"),
    ("out is a file", ["evaluate", "--lang", "en", "--model", "{d}/tiny", "--data", "embedded", "--out", "{d}/a_file"],
     "is a file"),
    ("absurd mask scale", ["export", "--model", "{d}/tiny", "--mask", "{d}/huge.safetensors", "--out", "{d}/exp"],
     "scales must lie in [0, 100]"),
    ("negative mask scale", ["evaluate", "--lang", "en", "--model", "{d}/tiny", "--data", "embedded",
                             "--mask", "[none, {d}/negative.safetensors]", "--out", "{d}/o"], "scales L0H1 by -1"),
    ("non-numeric mask entry", ["export", "--model", "{d}/tiny", "--mask", "{d}/strings.json", "--out", "{d}/exp"],
     "mask[0][2] is 'x', not a number"),
    ("float16 overflow", ["export", "--model", "{d}/tiny", "--mask", "{d}/huge.safetensors", "--out", "{d}/exp",
                          "--dtype", "float16", "--allow_extreme_scales"], "overflows float16"),
    ("already folded", ["export", "--model", "{d}/folded", "--mask", "{d}/mask.safetensors", "--out", "{d}/exp"],
     "already has a head mask folded into its weights"),
    ("export onto its source", ["export", "--model", "{d}/tiny", "--mask", "{d}/mask.safetensors", "--out", "{d}/tiny",
                                "--overwrite"], "is the input --model itself"),
    ("broken README markers", ["reproduce", "--model", "{d}/tiny", "--out", "{d}/o", "--readme", "{d}/README.md",
                               "--steps", "[scores]", "--scoring.source", "embedded"], "marker"),
    ("lahis eval is gone", ["eval", "--tasks", "xquad_de", "--model_args", "pretrained={d}/tiny"],
     "run lm-evaluation-harness itself"),
]


@pytest.mark.parametrize("case, argv, phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, tmp_path, case, argv, phrase):
    before = _snapshot(world)
    proc = _run([a.replace("{d}", str(world)) for a in argv], tmp_path)
    lines = [line for line in proc.stderr.splitlines()  # log records and progress bars are not error lines
             if line.strip() and not line.startswith(("WARNING", "INFO")) and "it/s]" not in line]
    assert proc.returncode == 2, (case, proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("lahis: error: "), lines
    assert "Traceback" not in proc.stderr and phrase in lines[0], lines[0]
    assert _snapshot(world) == before  # nothing the user had was written or changed
    assert not any(tmp_path.iterdir())


def test_a_second_run_on_a_live_runs_output_refuses(world, tmp_path):
    from lahis_ctrl.core.fileio import run_lock

    out = tmp_path / "busy"
    out.mkdir()
    with run_lock(out, "a test holding the folder"):
        proc = _run(["evaluate", "--lang", "en", "--model", str(world / "tiny"), "--data", "embedded", "--limit", "1",
                     "--out", str(out)], tmp_path)
    assert proc.returncode == 2 and "in use by a running lahis job (pid" in proc.stderr and "Traceback" not in proc.stderr
    assert "delete" not in proc.stderr  # never advise deleting a live run's files
    assert list(out.iterdir()) == []  # the refused run wrote nothing; the holder's lock file went with its lock


def test_what_the_cli_accepts_the_way_people_write_it(world, tmp_path):
    """Lists as en,de; bare boolean flags; UTF-8 with a BOM and CRLF line ends."""
    corpus = tmp_path / "bom.txt"
    corpus.write_bytes("\ufeffThe fox jumps over the lazy dog.\r\nPARIS is the capital of France.\r\n".encode("utf-8"))
    proc = _run(["info", str(world / "tiny"), "--modules"], tmp_path)
    assert proc.returncode == 0 and "model.layers.0.self_attn.o_proj" in proc.stdout, proc.stderr[-1500:]
    from lahis_ctrl.corpora.texts import load_texts

    assert load_texts(str(corpus), "en", n=None, seed=None)[0].startswith("The fox")  # BOM gone, lines kept


def test_no_option_collides_with_abbreviations_of_the_parsers_around_it():
    """argparse lets `--p` stand for any option it starts (jsonargparse's --print_config), and torchrun's own parser
    claims such prefixes of its options anywhere on the command line (`torchrun -m lahis_ctrl score --n 2`)."""
    import inspect

    from torch.distributed.run import get_args_parser

    from lahis_ctrl.cli import commands

    theirs = {o for o in get_args_parser()._option_string_actions if o.startswith("--")}
    theirs |= {"--config", "--print_config", "--print_shtab", "--help"}
    for name, command in commands().items():
        for param in inspect.signature(command).parameters:
            for spelling in (f"--{param}", f"--{param.replace('_', '-')}"):
                clash = [o for o in theirs if o.startswith(spelling)]
                assert not clash, (name, spelling, clash)


def test_error_boundary_turns_os_errors_into_one_line(world, tmp_path, monkeypatch, capsys):
    import errno

    from lahis_ctrl.cli import main

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "x"))

    monkeypatch.setattr("lahis_ctrl.core.fileio.os.replace", no_space)
    rc = main(["heads", str(world / "en.safetensors"), "--out", str(tmp_path / "o" / "heads.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no space left on the device" in err[0]
    assert not (tmp_path / "o" / "heads.json").exists() and not list((tmp_path / "o").glob(".*tmp"))


# ---------------------------------------------------------------------------------------------- the option grammar
# (argv, the one line's phrase): every choice and range is refused while parsing, before any model loads; every
# case also runs with a model path that does not exist, so a refusal that came after loading would name the model
GRAMMAR_REFUSED = [
    ("choice: --mode", ["score", "--model", "{m}", "--mode", "quick"], "--mode must be one of fast, faithful, got quick"),
    ("choice: --dtype", ["train-mask", "--lang", "de", "--model", "{m}", "--pick", "random", "--dtype", "fp64"],
     "--dtype must be one of auto, float32, bfloat16, float16, got fp64"),
    ("choice: --split", ["evaluate", "--lang", "de", "--model", "{m}", "--split", "dev"],
     "--split must be one of test, train, all, got dev"),
    ("choice: --style", ["evaluate", "--lang", "de", "--model", "{m}", "--style", "chat"],
     "--style must be one of paper, lm_eval, got chat"),
    ("choice: export --format", ["export", "--model", "{m}", "--mask", "x.safetensors", "--out", "{d}/e",
                                 "--format", "gguf"], "--format must be one of folded, lora"),
    ("choice: --pick", ["train-mask", "--lang", "de", "--model", "{m}", "--pick", "best"],
     "--pick must be one of top, random, got best"),
    ("choice: --metric", ["audit", "x.jsonl", "--metric", "bleu"], "--metric must be one of offtarget, lcb, got bleu"),
    ("choice: --backend", ["audit", "x.jsonl", "--backend", "cld3"], "--backend must be one of fasttext, glotlid"),
    ("choice: --split (texts over ranks)", ["score", "--model", "{m}", "--split", "rows"],
     "--split must be one of texts, languages, got rows"),
    ("range: --batch_size", ["score", "--model", "{m}", "--batch_size", "0"], "--batch_size must be an integer > 0, got 0"),
    ("range: --max_length", ["ppl", "s", "--model", "{m}", "--max_length", "1"], "--max_length must be an integer >= 2"),
    ("range: --q", ["heads", "s", "--q", "1"], "--q must be a number >= 0.0 and < 1.0, got 1"),
    ("range: --head_share", ["train-mask", "--lang", "de", "--model", "{m}", "--head_share", "0"],
     "--head_share must be a number > 0.0 and <= 1.0, got 0"),
    ("range: --lr", ["train-mask", "--lang", "de", "--model", "{m}", "--lr", "-1"], "--lr must be a number > 0, got -1"),
    ("range: --lr nan", ["train-mask", "--lang", "de", "--model", "{m}", "--lr", "nan"], "--lr must be a number > 0"),
    ("range: --limit", ["evaluate", "--lang", "de", "--model", "{m}", "--limit", "0"],
     "--limit must be an integer > 0 (or null), got 0"),
    ("range: --min_confidence", ["audit", "x.jsonl", "--min_confidence", "2"], "--min_confidence must be a number >= 0"),
    ("range: --seed", ["score", "--model", "{m}", "--seed", "-3"], "--seed must be an integer >= 0, got -3"),
    ("range in a section", ["reproduce", "--model", "{m}", "--xquad.test_items", "0"],
     "--xquad.test_items must be an integer > 0 (or null), got 0"),
    ("choice in a section", ["reproduce", "--model", "{m}", "--scoring.mode", "quick"],
     "--scoring.mode must be one of fast, faithful, got quick"),
    ("an integer", ["score", "--model", "{m}", "--texts", "many"], "--texts must be an integer > 0 (or null), got many"),
    ("unknown option, with the closest", ["score", "--langauges", "en"], "lahis score has no option --langauges; did "
                                                                          "you mean --languages?"),
    ("an earlier spelling (plot)", ["plot", "s", "--top", "3"], "lahis plot has no option --top: it is --top_heads now"),
    ("a positional given as an option", ["info", "--model", "{m}"], "MODEL is its first argument"),
    ("an earlier spelling", ["evaluate", "--lang", "de", "--masks", "none"], "has no option --masks: it is --mask now"),
    ("an earlier spelling (train-mask)", ["train-mask", "--lang", "de", "--heads", "random"],
     "has no option --heads: it is --pick now"),
    ("append onto a default list", ["score", "--model", "{m}", "--languages+", "fr"],
     "--languages+ appends to a list, here to the default one"),
    ("an option without its value", ["score", "--model", "{m}", "--out"], "--out needs a value"),
    ("a device torch does not have", ["train-mask", "--lang", "de", "--model", "{m}", "--pick", "random", "--device",
                                      "cuda:7"], "--device cuda:7"),
    ("a device torch does not know", ["evaluate", "--lang", "de", "--model", "{m}", "--device", "gpu"], "--device gpu"),
]


@pytest.mark.parametrize("case, argv, phrase", GRAMMAR_REFUSED, ids=[c[0] for c in GRAMMAR_REFUSED])
def test_the_grammar_refuses_before_anything_loads(tmp_path, monkeypatch, capsys, case, argv, phrase):
    """In process (the subprocess cases above hold the console boundary): exit status 2, one line, nothing written."""
    from lahis_ctrl.cli import main

    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{m}", str(tmp_path / "no-such-model")).replace("{d}", str(tmp_path)) for a in argv]
    rc = main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2, (case, rc, lines)
    assert len(lines) == 1 and lines[0].startswith("lahis: error: "), lines
    assert phrase in lines[0] and "no-such-model" not in lines[0], lines[0]
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_grammar_accepts_what_people_write(world, tmp_path):
    """One-item lists, comma lists, dashes, bare flags and -q / -v parse to the values the command receives."""
    from lahis_ctrl.cli import commands
    from lahis_ctrl.cli.options import normalize_argv

    found = commands()
    cases = [
        (["score", "--languages", "en"], {"languages": ["en"]}),
        (["score", "--languages", "en,de"], {"languages": ["en", "de"]}),
        (["score", "--languages", "[en, de]", "--max-length", "64"], {"languages": ["en", "de"], "max_length": 64}),
        (["evaluate", "--lang", "de", "--mask", "none"], {"mask": ["none"]}),
        (["evaluate", "--lang", "de", "--mask", "none,lahis=m.safetensors"], {"mask": ["none", "lahis=m.safetensors"]}),
        (["audit", "x.jsonl", "--details", "--skip-bad"], {"details": True, "skip_bad": True}),
        (["audit", "x.jsonl", "--plot", "false"], {"plot": False}),
        (["reproduce", "--scoring.languages", "en,de"], {"scoring.languages": ["en", "de"]}),
    ]
    from jsonargparse import ArgumentParser

    for argv, want in cases:
        args, _ = normalize_argv(argv, found)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_function_arguments(found[argv[0]], as_positional=True)
        cfg = parser.parse_args(args[1:])
        for key, value in want.items():
            assert cfg[key] == value, (argv, key, cfg[key])


def test_help_shows_choices_ranges_and_the_workflow(tmp_path):
    proc = _run(["--help"], tmp_path)
    assert proc.returncode == 0
    order = [line.split()[0] for line in proc.stdout.split("Available subcommands:")[1].splitlines()[2:]
             if line.startswith("    ") and not line.startswith("      ")]
    from lahis_ctrl.cli import COMMANDS

    workflow = ["demo", "info", "score", "heads", "plot", "ppl", "train-mask", "evaluate", "audit", "export",
                "reproduce"]
    assert order == list(COMMANDS) and [c for c in order if c in workflow] == workflow
    for summary in (s for _, s in COMMANDS.values()):  # the whole one-line description, never a cut sentence
        assert summary.endswith(".") and " ".join(summary.split()[:4]) in " ".join(proc.stdout.split())
    assert "--version" in proc.stdout and "-q, --quiet" in proc.stdout and "-v, --verbose" in proc.stdout
    score = _run(["score", "--help"], tmp_path).stdout
    assert "--mode {fast,faithful}" in score and "PositiveInt" in score and "--device DEVICE" in score
    assert "--device_map DEVICE_MAP" in score
    for command in ("train-mask", "evaluate", "ppl", "export", "demo", "reproduce"):
        text = _run([command, "--help"], tmp_path).stdout
        assert "--device " in text and "--device_map " in text, command
    version = _run(["--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("lahis-ctrl ") and "torch " in version.stdout


def test_quiet_and_verbose_act_on_the_package_logger_only(tmp_path, monkeypatch, capsys):
    """-q / -v set the level of the package's logger (never the root logger's), and -q draws no progress bar."""
    import logging

    from lahis_ctrl.cli import main

    texts = tmp_path / "gens.txt"
    texts.write_text("Der Hund bellt laut im Garten.\nDie Katze schläft auf dem Sofa.\n", encoding="utf-8")
    root = logging.getLogger().level
    for flags, level in (([], logging.INFO), (["-q"], logging.WARNING), (["-qq"], logging.ERROR),
                         (["-v"], logging.DEBUG)):
        out = tmp_path / f"r{len(flags)}{''.join(flags)}"
        assert main([*flags, "audit", str(texts), "--expected", "de", "--plot", "false", "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert logging.getLogger("lahis_ctrl").level == level and logging.getLogger().level == root, flags
        assert logging.getLogger("lahis_ctrl").propagate is False
        if flags and flags[0].startswith("-q"):
            assert "language ID" not in err, err  # no progress bar
        elif not flags:
            assert "language ID" in err  # the bar -q silences
    import tqdm.std

    assert "quiet" not in tqdm.std.tqdm.__init__.__name__  # the bars are themselves again after the command


def test_info_reads_the_config_and_loads_no_weights(world, tmp_path):
    """A model folder without its weight files: `lahis info` still prints the layout (a hub 8B costs its config)."""
    import shutil

    bare = tmp_path / "config_only"
    bare.mkdir()
    shutil.copy(world / "tiny" / "config.json", bare / "config.json")
    proc = _run(["info", str(bare)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "heads:      3 layers x 4 heads = 12" in proc.stdout and "KV heads:   2" in proc.stdout
    assert "o_proj:     model.layers.0.self_attn.o_proj" in proc.stdout
