"""Data-parallel LAHIS scoring under torch.distributed (gloo on CPUs), the compile switch, and their CLI.

Two ranks are real processes (torch.multiprocessing spawn, or torchrun for the CLI) on a tiny saved model. One
2-rank job (the `two_ranks` fixture) runs every multi-rank scenario at once, so process start-up (importing torch
and transformers, ~5 s on 2 cores) is paid once; each test then checks its part against one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lahis_ctrl.core.artifacts import fingerprint
from lahis_ctrl.core.errors import LahisError
from lahis_ctrl.lahis import distributed as dist
from lahis_ctrl.lahis.scoring import HeadScores, score_heads, score_languages

# an odd number of texts of very different lengths (2 to ~70 tokens with the tiny tokenizer)
TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river. " * 5,
    "Paris is the capital of France.",
    "Der schnelle braune Fuchs springt.",
    "El zorro salta sobre el perro perezoso y la capital es Madrid. Madrid es grande.",
    "भारत की राजधानी नई दिल्ली है।",
    "北京是中国的首都。北京是中国的首都。北京是中国的首都。",
    "Hello there",
]
LANGS = ["en", "es", "de"]
WORLD = 2


# ---------------------------------------------------------------------------- 2-rank jobs (run in the children)
from tiny import Interrupt, interrupt_after as _interrupt_after  # noqa: E402


def _load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def _job_main(rank: int, out: Path, model_dir: str, res: dict) -> None:
    model, tok = _load(model_dir)
    kw = dict(progress=False)
    res["fast"] = score_heads(model, tok, TEXTS, batch_size=2, **kw)  # 4 batches over 2 ranks
    res["fast_b1"] = score_heads(model, tok, TEXTS[:5], batch_size=1, **kw)  # 5 batches: 3 and 2
    res["one_text"] = score_heads(model, tok, TEXTS[:1], batch_size=2, **kw)  # rank 1 has nothing to do
    try:
        score_heads(model, tok, TEXTS, mode="faithful", **kw)
        res["faithful"] = "no error"
    except LahisError as exc:
        res["faithful"] = str(exc)
    dist.setup().barrier()  # the ranks still meet: the refusal left nobody inside a collective
    res["by_language"] = score_languages(model, tok, LANGS, n=3, max_length=24, out_dir=out / "by_language",
                                         split="languages", **kw)
    res["by_texts"] = score_languages(model, tok, ["en"], n=3, max_length=24, out_dir=out / "by_texts", **kw)
    # the first half of the resume test: rank 1 crashes after 1 of its 2 batches
    if rank == 1:
        _interrupt_after(model, 1)
    try:
        score_heads(model, tok, TEXTS, batch_size=2, checkpoint=out / "resume" / "en.ckpt.safetensors",
                    checkpoint_every=1, check_loss=False, **kw)
        res["interrupted"] = "no error"
    except (Interrupt, LahisError) as exc:
        res["interrupted"] = f"{type(exc).__name__}: {exc}"


def _job_resume(rank: int, out: Path, model_dir: str, res: dict) -> None:
    model, tok = _load(model_dir)
    res["resumed"] = score_heads(model, tok, TEXTS, batch_size=2, checkpoint=out / "resume" / "en.ckpt.safetensors",
                                 checkpoint_every=1, check_loss=False, progress=False)


JOBS = {"main": _job_main, "resume": _job_resume}


def _worker(rank: int, world: int, port: int, job: str, out: str, model_dir: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(1)
    res: dict = {}
    try:
        JOBS[job](rank, Path(out), model_dir, res)
    except BaseException as exc:  # reported to the test, which fails with it
        res["error"] = f"{type(exc).__name__}: {exc}"
    torch.save(res, Path(out) / f"{job}.rank{rank}.pt")
    dist.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(job: str, out: Path, model_dir: Path, world: int = WORLD) -> list[dict]:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, _free_port(), job, str(out), str(model_dir)), nprocs=world, join=True)
    results = [torch.load(out / f"{job}.rank{r}.pt", weights_only=False) for r in range(world)]
    for r, res in enumerate(results):
        assert "error" not in res, f"rank {r}: {res['error']}"
    return results


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="module")
def one_process(model_dir):
    return _load(model_dir)


@pytest.fixture(scope="module")
def two_ranks(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks")
    return out, run_ranks("main", out, model_dir)


def assert_same_scores(a: HeadScores, b: HeadScores, exact: bool = False) -> None:
    """Equal up to float32 summation order (importance), exactly equal counts (negative fraction, texts, tokens)."""
    if exact:
        assert torch.equal(a.importance, b.importance) and torch.equal(a.scores, b.scores)
    tol = dict(rtol=1e-6, atol=1e-6 * float(b.importance.abs().max()))
    torch.testing.assert_close(a.importance, b.importance, **tol)
    torch.testing.assert_close(a.scores, b.scores, **tol)
    assert torch.equal(a.negative_fraction, b.negative_fraction)
    assert (a.num_texts, a.num_tokens) == (b.num_texts, b.num_tokens)


# ---------------------------------------------------------------------------- sharding (no processes)
def test_shards_are_deterministic_balanced_and_cover_every_batch():
    costs = [5, 9, 9, 30, 31, 32, 60, 64, 64, 64, 128]
    for world in (1, 2, 3, 4, 16):
        shards = dist.shard_batches(costs, world)
        assert shards == dist.shard_batches(costs, world)
        assert sorted(b for s in shards for b in s) == list(range(len(costs)))
        assert all(s == sorted(s) for s in shards)
        loads = [sum(costs[b] for b in s) for s in shards]
        if world <= len(costs):
            assert max(loads) - min(loads) <= max(costs)  # never more than one batch apart
    assert dist.shard_batches(costs, 1) == [list(range(len(costs)))]
    assert dist.split_languages(["en", "es", "de", "hi", "zh"], 2) == [["en", "de", "zh"], ["es", "hi"]]
    p = Path("out/en.ckpt.safetensors")
    assert dist.rank_checkpoint_path(p, 0, 1) == p  # one process: the path (and format) of earlier versions
    assert dist.rank_checkpoint_path(p, 1, 4) == Path("out/en.ckpt.rank1-of-4.safetensors")


# ---------------------------------------------------------------------------- 2 ranks == 1 process
def test_two_ranks_equal_one_process(two_ranks, one_process):
    _, ranks = two_ranks
    model, tok = one_process
    for name, texts, batch in [("fast", TEXTS, 2), ("fast_b1", TEXTS[:5], 1), ("one_text", TEXTS[:1], 2)]:
        one = score_heads(model, tok, texts, batch_size=batch, progress=False)
        assert_same_scores(ranks[0][name], one)
        assert_same_scores(ranks[1][name], ranks[0][name], exact=True)  # every rank returns the same scores
    lengths = [len(tok(t)["input_ids"]) for t in TEXTS]
    assert max(lengths) > 10 * min(lengths)


def test_metadata_records_the_world_size(two_ranks, one_process, tmp_path):
    out, ranks = two_ranks
    model, tok = one_process
    plain = score_heads(model, tok, TEXTS[:3], progress=False)
    assert plain.extra["world_size"] == 1
    assert HeadScores.load(plain.save(tmp_path / "en.safetensors")).extra["world_size"] == 1
    assert ranks[0]["fast"].extra["world_size"] == ranks[1]["fast"].extra["world_size"] == 2
    # score_languages split over texts: rank 0 wrote the file, every rank removed its own checkpoint
    written = HeadScores.load(out / "by_texts" / "en.safetensors")
    assert written.extra["world_size"] == 2 and torch.equal(written.scores, ranks[1]["by_texts"]["en"].scores)
    assert sorted(p.name for p in (out / "by_texts").iterdir()) == ["en.safetensors"]
    one = score_languages(model, tok, ["en"], n=3, max_length=24, out_dir=tmp_path / "one", progress=False)
    assert_same_scores(written, one["en"])


def test_faithful_refuses_under_two_ranks_without_deadlock(two_ranks):
    _, ranks = two_ranks
    for res in ranks:  # both ranks got the same one-line error, and then met at a barrier
        assert res["faithful"].startswith("faithful mode is sequential") and "\n" not in res["faithful"]


def test_split_by_language_equals_one_process(two_ranks, one_process, tmp_path):
    out, ranks = two_ranks
    model, tok = one_process
    one = score_languages(model, tok, LANGS, n=3, max_length=24, out_dir=tmp_path, progress=False)
    for res in ranks:
        assert list(res["by_language"]) == LANGS  # every rank returns every language
        for lang in LANGS:
            assert_same_scores(res["by_language"][lang], one[lang], exact=True)
            assert res["by_language"][lang].extra["world_size"] == 1  # one process scored this language
    for lang in LANGS:  # the file its rank wrote is byte for byte the one-process file
        assert (out / "by_language" / f"{lang}.safetensors").read_bytes() == (tmp_path / f"{lang}.safetensors").read_bytes()
    assert not list((out / "by_language").glob("*.ckpt*"))


def test_killed_rank_resumes_to_the_uninterrupted_result(two_ranks, model_dir, one_process):
    out, ranks = two_ranks
    tok = one_process[1]
    lengths = sorted(len(tok(t)["input_ids"]) for t in TEXTS)
    batches = [lengths[i:i + 2] for i in range(0, len(lengths), 2)]
    shards = dist.shard_batches([len(b) * max(b) for b in batches], 2)
    assert len(shards[1]) >= 2  # rank 1 really is interrupted half-way
    assert ranks[1]["interrupted"].startswith("Interrupt: test crash")
    assert ranks[0]["interrupted"].startswith("LahisError:") and "rank(s) 1 of 2" in ranks[0]["interrupted"]
    from lahis_ctrl.core.artifacts import Checkpoint

    base = out / "resume" / "en.ckpt.safetensors"
    assert not base.exists()
    states = [Checkpoint(dist.rank_checkpoint_path(base, r, 2), "").read()[1] for r in range(2)]
    assert [s["done_batches"] for s in states] == [len(shards[0]), 1]  # rank 0 finished its share, rank 1 crashed
    assert [(s["rank"], s["world_size"]) for s in states] == [(0, 2), (1, 2)]
    resumed = run_ranks("resume", out, model_dir)
    for res in resumed:
        assert_same_scores(res["resumed"], ranks[0]["fast"], exact=True)


# ---------------------------------------------------------------------------- one process: compatibility, refusal
def test_one_process_checkpoint_keeps_its_path_and_fingerprint(tmp_path, one_process):
    """A plain run writes <lang>.ckpt.safetensors fingerprinted exactly as earlier versions did."""
    from lahis_ctrl.core.architecture import describe
    from lahis_ctrl.core.artifacts import Checkpoint
    from lahis_ctrl.core.lm import tokenize_texts

    model, tok = one_process
    ckpt = tmp_path / "en.ckpt.safetensors"
    score_heads(model, tok, TEXTS[:3], batch_size=2, checkpoint=ckpt, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["en.ckpt.safetensors"]
    spec = describe(model)
    settings = {"mode": "fast", "max_length": 2048, "lr": None, "mask_dtype": "float32", "batch_size": 2,
                "model": spec.to_dict() | {"o_proj_names": None}}
    state = Checkpoint(ckpt, "").read()[1]
    assert state["fingerprint"] == fingerprint(settings, ids=tokenize_texts(tok, TEXTS[:3], 2048), length=64)
    assert "rank" not in state and "world_size" not in state


def test_cli_refuses_faithful_under_two_ranks(monkeypatch, capsys, model_dir, tmp_path):
    from lahis_ctrl.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    common = ["--model", str(model_dir), "--languages", "[en]", "--texts", "2", "--max_length", "16", "--out", str(tmp_path)]
    assert main(["score", "--mode", "faithful", *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lahis: error: faithful mode is sequential") and err.count("\n") == 1
    assert "Traceback" not in err and "split 'languages'" in err
    assert not torch.distributed.is_initialized()  # refused before joining any process group
    with pytest.raises(LahisError, match="faithful mode is sequential"):
        score_heads(*_load(model_dir), TEXTS, mode="faithful", progress=False)
    assert score_heads(*_load(model_dir), TEXTS[:2], mode="faithful", progress=False, distributed=False).num_texts == 2


@pytest.mark.skipif(not (Path(sys.executable).parent / "torchrun").is_file(), reason="no torchrun next to python")
def test_torchrun_cli_end_to_end_writes_the_one_process_file(model_dir, tmp_path):
    from lahis_ctrl.cli import main

    def config(out: Path, **extra) -> Path:
        cfg = {"model": str(model_dir), "languages": ["en", "es"], "source": "embedded", "texts": 3, "max_length": 24,
               "batch_size": 1, "out": str(out), **extra}
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(json.dumps(cfg))  # JSON is YAML
        return path

    # program options go in the config: torchrun's parser claims abbreviations such as --n anywhere on the line
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "LAHIS_NO_LM_EVAL_HOOK": "1"}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "lahis_ctrl",
           "score", "--config"]
    run = subprocess.run(cmd + [str(config(tmp_path / "two"))], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("texts,") == 2  # rank 0 alone prints the summary lines
    assert main(["score", "--config", str(config(tmp_path / "one"))]) == 0
    for lang in ("en", "es"):
        two = HeadScores.load(tmp_path / "two" / f"{lang}.safetensors")
        one = HeadScores.load(tmp_path / "one" / f"{lang}.safetensors")
        assert_same_scores(two, one)
        assert (two.extra["world_size"], one.extra["world_size"]) == (2, 1)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["en.safetensors", "es.safetensors"]


# ---------------------------------------------------------------------------- compile
def _compile_state(model):
    from lahis_ctrl.core.architecture import output_projections

    return ([getattr(layer, "_compiled_call_impl", None) for layer in model.get_decoder().layers],
            [(dict(p._forward_pre_hooks), "_lahis_scale" in p.__dict__) for p in output_projections(model)])


@pytest.mark.parametrize("mode,backend", [("fast", "aot_eager"), ("faithful", "eager")])
def test_compile_switch_gives_the_same_scores(mode, backend):
    """torch.compile'd decoder layers give the eager scores; nothing stays compiled or hooked afterwards.

    Backends without code generation (inductor takes ~25 s a graph on 2 CPU cores): aot_eager traces forward
    and backward (fast mode's fused per-row scale), eager traces the hooks and dynamic shapes."""
    from tiny import tiny_model, tiny_tokenizer

    model, tok = tiny_model("llama"), tiny_tokenizer()
    before = _compile_state(model)
    texts = TEXTS[:6]  # two full batches of 3: a batch of 1 would be one more graph to compile
    eager = score_heads(model, tok, texts, mode=mode, batch_size=3, progress=False, check_loss=False)
    compiled = score_heads(model, tok, texts, mode=mode, batch_size=3, progress=False, check_loss=False,
                           compile=backend)
    tol = dict(rtol=1e-5, atol=1e-5 * float(eager.importance.abs().max()))
    torch.testing.assert_close(compiled.importance, eager.importance, **tol)
    torch.testing.assert_close(compiled.negative_fraction, eager.negative_fraction, rtol=0, atol=1 / len(texts) + 1e-6)
    assert _compile_state(model) == before


def test_compile_falls_back_with_a_warning(monkeypatch):
    import torch._dynamo

    from tiny import tiny_model, tiny_tokenizer

    model, tok = tiny_model("gemma3"), tiny_tokenizer()
    eager = score_heads(model, tok, TEXTS[:3], progress=False)
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.warns(RuntimeWarning, match="compile=True ignored"):
        fallback = score_heads(model, tok, TEXTS[:3], progress=False, compile=True)
    assert torch.equal(fallback.scores, eager.scores)
    with pytest.raises(LahisError, match="compile must be"):
        score_heads(model, tok, TEXTS[:3], progress=False, compile=3)
