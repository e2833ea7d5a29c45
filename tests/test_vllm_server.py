"""vLLM's OpenAI-compatible server with a head mask, and the guards that stop a masked engine.

The server runs in its default (compiled, non-eager) mode: the fold happens before torch.compile sees
the model, so compiled inference serves the masked weights.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

import torch  # noqa: E402

from lahis_ctrl import HeadMask  # noqa: E402
from lahis_ctrl.integrations.vllm import CONFIG_KEY, MASK_ENV  # noqa: E402
from vllm_support import ENGINE_ARGS, MAX_NEW, assert_close_results, model_dir, references, workdir  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(port, *extra, env_extra=None, log_name="server.log"):
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir(), "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--max-model-len", "256", "--max-num-seqs", "4", "--seed", "0",
           *extra]
    log = open(os.path.join(workdir(), log_name), "w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group: api server, engine core, worker
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _wait_ready(proc, log, port, timeout=400):
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, "server exited:\n" + open(log.name).read()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.time() < deadline, "server not ready in time"
        time.sleep(1)


def _complete(port, prompt, **extra):
    """(token ids, logprobs) of a greedy completion through the OpenAI API."""
    out = _post(port, "/v1/completions", {"model": model_dir(), "prompt": prompt, "max_tokens": MAX_NEW,
                                          "temperature": 0, "logprobs": 0, "return_tokens_as_token_ids": True,
                                          **extra})
    lp = out["choices"][0]["logprobs"]
    return [int(t.split(":")[1]) for t in lp["tokens"]], lp["token_logprobs"]


def test_openai_server_serves_the_masked_model():
    ids, mask_path, masked, unmasked = references()
    port = _free_port()
    proc, log = _server(port, env_extra={MASK_ENV: mask_path})
    try:
        _wait_ready(proc, log, port)
        got = [_complete(port, prompt) for prompt in ids]
        assert_close_results(got, masked, atol=5e-4)  # compiled kernels may round differently from eager
    finally:
        _stop(proc)
        log.close()


def test_openai_server_refuses_a_mismatched_mask(tmp_path):
    other = HeadMask(torch.ones(5, 4), model_type="llama", head_dim=32, model_name="another-model")
    other.values[0, 0] = 0
    path = other.save(tmp_path / "other.safetensors")
    proc, log = _server(_free_port(), "--additional-config", json.dumps({CONFIG_KEY: str(path)}),
                        log_name="server-bad.log")
    try:
        rc = proc.wait(timeout=180)
    finally:
        _stop(proc)
    text = open(log.name).read()
    log.close()
    assert rc != 0
    assert "cannot be served" in text and "shape mismatch" in text and "another-model" in text


def test_an_engine_that_cannot_fold_refuses_to_start(capfd):
    """load_format='dummy' never streams checkpoint weights: the worker must stop instead of serving unmasked."""
    _, mask_path, _, _ = references()
    with pytest.raises(Exception):
        vllm.LLM(model_dir(), load_format="dummy", enforce_eager=True, additional_config={CONFIG_KEY: mask_path},
                 **ENGINE_ARGS)
    err = capfd.readouterr()
    assert "was NOT applied to layers [0, 1, 2]" in err.out + err.err


def test_openai_server_per_request_masks(tmp_path):
    """Two masks registered at start (one by Hub repo id from an offline cache), chosen per request with
    vllm_xargs; interleaved concurrent requests for each mask and none are answered as engines with that mask
    folded in answer them alone; an unknown name is one request's HTTP 400, and the server keeps serving."""
    import random
    import urllib.error
    from concurrent.futures import ThreadPoolExecutor

    from hub_support import cache_repo, hub_env
    from vllm_support import request_masks_setup

    ids, paths, refs = request_masks_setup()
    home = tmp_path / "hf"
    cache_repo(home, "lahis-test/mask-b", {"lahis_mask.safetensors": open(paths["b"], "rb").read()})
    port = _free_port()
    config = {"lahis_masks": {"a": paths["a"], "b": "lahis-test/mask-b"}}
    proc, log = _server(port, "--additional-config", json.dumps(config), env_extra=hub_env(home),
                        log_name="server-requests.log")
    try:
        _wait_ready(proc, log, port)
        jobs = [(i, name) for name in (None, "a", "b") for i in range(len(ids))]
        random.Random(1).shuffle(jobs)

        def ask(job):
            i, name = job
            return _complete(port, ids[i], **({} if name is None else {"vllm_xargs": {"lahis_mask": name}}))

        with ThreadPoolExecutor(max_workers=6) as pool:  # in flight together: the engine batches them
            got = list(pool.map(ask, jobs))
        for (i, name), result in zip(jobs, got):
            assert_close_results([result], [refs[name][i]], atol=5e-4)  # compiled vs eager references
        for bad in ("zz", paths["a"]):
            with pytest.raises(urllib.error.HTTPError) as exc:
                _complete(port, ids[0], vllm_xargs={"lahis_mask": bad})
            assert exc.value.code == 400
            message = json.loads(exc.value.read())["error"]["message"]
            assert "is not a head mask registered with this server; registered: a, b" in message
            assert "\n" not in message
        assert_close_results([_complete(port, ids[2], vllm_xargs={"lahis_mask": "b"})], [refs["b"][2]], atol=5e-4)
        assert proc.poll() is None
    finally:
        _stop(proc)
        log.close()
