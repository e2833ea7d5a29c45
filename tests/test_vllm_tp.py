"""vLLM with tensor parallelism 2 (two CPU ranks), the mask given by $LAHIS_MASK, multi-LoRA enabled.

Each rank holds half of every layer's heads (RowParallelLinear o_proj): the load-time fold and live
masks must reach both, and a LoRA adapter exported from a mask must apply per request.
"""

import os

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

from lahis_ctrl import HeadMask  # noqa: E402
from lahis_ctrl.integrations.vllm import MASK_ENV, get_head_mask, mask_status, set_head_mask  # noqa: E402
from lahis_ctrl.integrations.vllm.lora import export_lora  # noqa: E402
from vllm_support import (ENGINE_ARGS, RESULTS, assert_close_results, make_mask, max_diff, model_dir,  # noqa: E402
                          references, vllm_greedy, vllm_tiny_model)


@pytest.fixture(scope="module")
def engine():
    ids, mask_path, masked, unmasked = references()
    env = {MASK_ENV: mask_path, "VLLM_CPU_OMP_THREADS_BIND": "0|1"}  # one OpenMP thread per rank, own core
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        llm = vllm.LLM(model_dir(), tensor_parallel_size=2, enforce_eager=True, enable_lora=True, max_lora_rank=64,
                       max_loras=2, **ENGINE_ARGS)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield {"llm": llm, "ids": ids, "mask_path": mask_path, "masked": masked, "unmasked": unmasked,
           "load_time": vllm_greedy(llm, ids)}
    llm.llm_engine.engine_core.shutdown()


def test_tp2_load_time_mask(engine):
    status = mask_status(engine["llm"])
    assert sorted(s["rank"] for s in status) == [0, 1]
    assert all(s["folded_layers"] == [0, 1, 2] and s["source"] == f"${MASK_ENV}" for s in status)
    assert_close_results(engine["load_time"], engine["masked"])
    if "tp1_masked" in RESULTS:  # test_vllm.py ran in this session: TP=2 == TP=1
        assert_close_results(engine["load_time"], RESULTS["tp1_masked"])


def test_tp2_live_masks_reach_every_rank(engine):
    llm, ids = engine["llm"], engine["ids"]
    set_head_mask(llm, None)
    original = vllm_greedy(llm, ids)
    assert_close_results(original, engine["unmasked"])
    assert all(s["values"] is None for s in mask_status(llm))
    set_head_mask(llm, engine["mask_path"])
    assert vllm_greedy(llm, ids) == engine["load_time"]
    assert get_head_mask(llm).changed_heads() == HeadMask.load(engine["mask_path"]).changed_heads()
    # heads held by rank 1 only (heads 2-3 of each layer): a rank that missed the update would show
    set_head_mask(llm, HeadMask.from_heads(vllm_tiny_model(), [(0, 3), (1, 2), (2, 3)], 0.0))
    assert max_diff(vllm_greedy(llm, ids), original) > 1e-3


def test_lora_adapter_per_request(engine, tmp_path):
    from vllm.lora.request import LoRARequest

    llm, ids = engine["llm"], engine["ids"]
    model = vllm_tiny_model()
    adapter = export_lora(model, make_mask(model), tmp_path / "adapter")
    set_head_mask(llm, None)
    unmasked = vllm_greedy(llm, ids)
    lora = LoRARequest("masked", 1, str(adapter))
    mixed = vllm_greedy(llm, ids, lora_request=[lora, None, lora, None])
    # with the adapter == the folded mask; without it, in the same batch == the unmasked model, exactly
    assert_close_results([mixed[0], mixed[2]], [engine["load_time"][0], engine["load_time"][2]])
    assert [mixed[1], mixed[3]] == [unmasked[1], unmasked[3]]
    assert max_diff([mixed[0]], [unmasked[0]]) > 1e-2
