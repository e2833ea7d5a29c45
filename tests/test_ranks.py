"""Ranks that do not agree never compute, and a rank whose peers never come does not wait for hours.

One 2-rank gloo job (torch.multiprocessing spawn, as tests/test_distributed.py runs them) tries every kind of
disagreement in turn: each must stop BOTH ranks with the same one-line LahisError naming the setting, and leave the
ranks able to meet again (no rank stuck in a collective). The start-up failures run in one process.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch

from lahis_ctrl.core.errors import LahisError
from lahis_ctrl.lahis import distributed as dist

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hello there"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# (case, what rank 1 is given differently, the phrase both ranks' one line must hold)
DISAGREEMENTS = [
    ("languages", "score_languages' input 'languages'"),
    ("texts", "score_languages' input 'n'"),
    ("model weights", "'model weights'"),
    ("score_heads texts", "score_heads' input 'texts'"),
    ("score_heads max_length", "score_heads' input 'settings'"),
    ("cli languages", "the option 'languages'"),
    ("cli max_length", "the option 'max_length'"),
]


def _case(rank: int, case: str, model_dir: str, other_dir: str, out: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lahis_ctrl.lahis.scoring import score_heads, score_languages

    tok = AutoTokenizer.from_pretrained(model_dir)
    mine = rank == 1  # rank 1 is the one given something else
    if case.startswith("cli"):
        from lahis_ctrl.cli import main

        option = case.split()[1]
        value = {"languages": ["en", "de"][rank], "max_length": ["16", "24"][rank]}[option]
        args = ["score", "--model", model_dir, "--texts", "2", "--out", str(out / "cli"), "--languages", "en",
                "--max_length", "16", f"--{option}", value]
        err = io.StringIO()
        with redirect_stderr(err):
            rc = main(args)
        return f"rc={rc} {err.getvalue().strip()}"
    model = AutoModelForCausalLM.from_pretrained(other_dir if (case == "model weights" and mine) else model_dir)
    kw = dict(progress=False)
    if case == "score_heads texts":
        score_heads(model, tok, TEXTS[:2] if mine else TEXTS, **kw)
    elif case == "score_heads max_length":
        score_heads(model, tok, TEXTS, max_length=8 if mine else 16, **kw)
    else:
        languages = ["en", "de"] if (case == "languages" and mine) else ["en"]
        score_languages(model, tok, languages, n=3 if (case == "texts" and mine) else 2, max_length=16,
                        out_dir=out / case.replace(" ", "_"), **kw)
    return "no error"


def _worker(rank: int, world: int, port: int, model_dir: str, other_dir: str, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(1)
    res: dict = {}
    try:
        for case, _ in DISAGREEMENTS:
            try:
                res[case] = _case(rank, case, model_dir, other_dir, Path(out))
            except LahisError as exc:
                res[case] = f"LahisError: {exc}"
            dist.setup().barrier()  # both ranks still meet: the refusal left nobody inside a collective
    except BaseException as exc:  # reported to the test
        res["error"] = f"{type(exc).__name__}: {exc}"
    torch.save(res, Path(out) / f"rank{rank}.pt")
    dist.shutdown()


@pytest.fixture(scope="module")
def disagreeing_ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    from tiny import save_tiny

    d = tmp_path_factory.mktemp("ranks")
    a, b = save_tiny(d / "a", "llama", seed=0), save_tiny(d / "b", "llama", seed=1)
    mp.spawn(_worker, args=(2, _free_port(), str(a), str(b), str(d)), nprocs=2, join=True)
    results = [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r, res in enumerate(results):
        assert "error" not in res, f"rank {r}: {res['error']}"
    return d, results


@pytest.mark.parametrize("case, phrase", DISAGREEMENTS, ids=[c[0] for c in DISAGREEMENTS])
def test_ranks_given_different_settings_or_weights_both_refuse(disagreeing_ranks, case, phrase):
    out, results = disagreeing_ranks
    lines = [res[case] for res in results]
    for line in lines:
        body = line.split("lahis: error: ")[-1].removeprefix("LahisError: ")
        assert line.startswith(("LahisError: ", "rc=2 lahis: error: ")), line
        assert "\n" not in body and "ranks disagree on" in body and phrase in body, line
        assert "rank 0" in body and "rank 1" in body, line  # both sides named
    if case.startswith("cli"):
        assert not (out / "cli").exists() or not any((out / "cli").iterdir())  # refused before anything was written
    else:
        assert not list(out.glob(f"{case.replace(' ', '_')}/*.safetensors"))  # no file labelled with one rank's view


def test_a_rank_without_its_peer_fails_within_the_peer_timeout(monkeypatch):
    """Rank 1 started by hand with no rank 0: one LahisError after about --peer_timeout, not the 4-hour default."""
    monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", "FATAL")
    for k, v in dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(_free_port()), CUDA_VISIBLE_DEVICES="").items():
        monkeypatch.setenv(k, v)
    start = time.monotonic()
    with pytest.raises(LahisError, match=r"rank 1 could not reach rank 0 at 127\.0\.0\.1:\d+ within 2 s.*--peer_timeout"):
        dist.setup(peer_timeout_s=2)
    assert time.monotonic() - start < 30 and not torch.distributed.is_initialized()


def test_rank_zero_alone_is_one_line_and_exit_2_under_the_cli(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "CUDA_VISIBLE_DEVICES": "", "LAHIS_PEER_TIMEOUT_S": "3",
           "HF_HUB_OFFLINE": "1"}
    from tiny import save_tiny

    model = save_tiny(tmp_path / "m", "llama")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lahis_ctrl", "score", "--model", str(model), "--languages", "en",
                           "--texts", "2", "--max_length", "16", "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "rank 0 waited 3 s" in lines[0] and "only 1/2 joined" in lines[0] and "--peer_timeout" in lines[0]
    assert time.monotonic() - start < 120 and not (tmp_path / "out").exists()


@pytest.fixture
def one_rank_env(monkeypatch):
    for k, v in dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", CUDA_VISIBLE_DEVICES="",
                     TORCH_CPP_LOG_LEVEL="FATAL").items():
        monkeypatch.setenv(k, v)
    return monkeypatch


@pytest.mark.parametrize("case, phrase", [
    ("RANK unset", "WORLD_SIZE=2 but RANK is not set: start the ranks with torchrun"),
    ("MASTER_PORT in use", "is in use by another program: choose a free port"),
    ("MASTER_PORT unset", "but MASTER_PORT is not set"),
    ("bad peer timeout", "LAHIS_PEER_TIMEOUT_S='soon' is not a number of seconds"),
])
def test_torch_distributed_start_up_errors_are_one_line(one_rank_env, case, phrase):
    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        one_rank_env.setenv("MASTER_PORT", str(busy.getsockname()[1] if case == "MASTER_PORT in use" else _free_port()))
        if case == "RANK unset":
            one_rank_env.delenv("RANK")
        if case == "MASTER_PORT unset":
            one_rank_env.delenv("MASTER_PORT")
        if case == "bad peer timeout":
            one_rank_env.setenv("LAHIS_PEER_TIMEOUT_S", "soon")
        with pytest.raises(LahisError) as err:
            dist.setup(peer_timeout_s=None if case == "bad peer timeout" else 2)
        assert phrase in str(err.value) and "\n" not in str(err.value), str(err.value)
        assert not torch.distributed.is_initialized()
    finally:
        busy.close()


def test_resuming_with_the_same_number_of_ranks_warns_of_nothing(tmp_path):
    """Only checkpoints of ANOTHER world size are 'of another number of ranks'; a rank's peers' files are not."""
    base = tmp_path / "en.ckpt.safetensors"
    for name in ("en.ckpt.rank0-of-2.safetensors", "en.ckpt.rank1-of-2.safetensors", "en.ckpt.rank2-of-4.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in dist.rank_checkpoints(base, other_than=2)] == ["en.ckpt.rank2-of-4.safetensors"]
    base.write_bytes(b"x")  # a one-process checkpoint is of another number of ranks for a 2-rank job
    assert [p.name for p in dist.rank_checkpoints(base, other_than=2)][0] == "en.ckpt.safetensors"
    assert [p.name for p in dist.rank_checkpoints(base, other_than=1)] == [
        "en.ckpt.rank0-of-2.safetensors", "en.ckpt.rank1-of-2.safetensors", "en.ckpt.rank2-of-4.safetensors"]


KILLED_PEER = """
import os, sys, time
from lahis_ctrl.lahis import distributed as dist
ctx = dist.setup(peer_timeout_s=60)
if ctx.rank == 1:
    os._exit(9)  # killed mid-job
time.sleep(1)
try:
    ctx.barrier()
    print("no error")
except Exception as exc:
    print(type(exc).__name__ + ": " + str(exc))
"""


def test_a_peer_killed_mid_job_is_one_line_on_the_survivor():
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", KILLED_PEER], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              env={**os.environ, "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "CUDA_VISIBLE_DEVICES": "",
                                   "TORCH_CPP_LOG_LEVEL": "FATAL"}) for r in range(2)]
    out = [p.communicate(timeout=180)[0].strip() for p in procs]
    assert procs[1].returncode == 9
    assert out[0].startswith("LahisError: rank 0: a collective with the other ranks failed"), out[0]
    assert "a peer rank stopped, was killed or cannot be reached" in out[0] and "\n" not in out[0]
