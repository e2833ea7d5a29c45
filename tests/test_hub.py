"""Masks on the Hugging Face Hub: references, resolution through a real huggingface_hub cache folder in offline mode,
and the upload up to the commit (its operations and the model card), then back by repo id through transformers,
lm-eval (lahis_hf) and PEFT. The Hub itself is never contacted: the upload calls are intercepted (hub_support)."""

import json
import re

import pytest
import torch
import yaml

from hub_support import Intercepted, cache_repo, folder_files, offline_hub
from lahis_ctrl import HeadMask, LahisError, apply_head_mask
from lahis_ctrl.core.hub import DEFAULT_FILE, parse_reference, resolve_mask_file
from tiny import save_tiny, tiny_model

BASE = "lahis-test/tiny-llama"
REPO = "lahis-test/de-mask"


def _mask(model, **kw):
    mask = HeadMask.from_heads(model, [(0, 1), (2, 3)], 0.0, language="de", **kw)
    mask.values[1, 0] = 2.5
    return mask


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An offline Hub cache holding the tiny base model as BASE (what a user who downloaded it once has)."""
    home = tmp_path / "hf"
    save_tiny(tmp_path / "base", "llama")
    commit = cache_repo(home, BASE, folder_files(tmp_path / "base"))
    offline_hub(monkeypatch, home)
    return {"home": home, "base_commit": commit}


def _base_model(hub):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(BASE).eval()  # from the cache, offline


def _push(monkeypatch, mask, **kw):
    hub = Intercepted().install(monkeypatch)
    info = mask.push_to_hub(REPO, **kw)
    return hub, info


# ---------------------------------------------------------------------------------------------- references
def test_reference_forms(tmp_path, monkeypatch):
    ref = parse_reference("org/name")
    assert (ref.repo_id, ref.filename, ref.revision) == ("org/name", DEFAULT_FILE, None)
    ref = parse_reference("org/name/masks/de.safetensors@v1.2")
    assert (ref.repo_id, ref.filename, ref.revision) == ("org/name", "masks/de.safetensors", "v1.2")
    assert parse_reference("org/name@" + "a" * 40).revision == "a" * 40
    # paths that can only be local are never looked up on the Hub
    for local in ("/abs/m.safetensors", "./m.json", "../x/m.safetensors", "~/m.safetensors", "masks/de.safetensors",
                  "m.safetensors"):
        assert not parse_reference(local).is_hub, local
    # an existing local folder wins over a repo of the same spelling
    monkeypatch.chdir(tmp_path)
    mask = _mask(tiny_model("llama"))
    (tmp_path / "org" / "name").mkdir(parents=True)
    mask.save(tmp_path / "org" / "name" / DEFAULT_FILE)
    assert not parse_reference("org/name").is_hub
    assert torch.equal(HeadMask.load("org/name").values, mask.values)
    with pytest.raises(LahisError, match="holds no lahis_mask.safetensors"):
        HeadMask.load(str(tmp_path))
    with pytest.raises(LahisError, match="file not found"):
        HeadMask.load("masks/de.safetensors")


def test_resolution_through_the_offline_cache(hub, monkeypatch):
    mask = _mask(tiny_model("llama"))
    files = {DEFAULT_FILE: mask.save(hub["home"].parent / "m.safetensors").read_bytes()}
    main = cache_repo(hub["home"], REPO, files)
    other = _mask(tiny_model("llama"))
    other.values[0, 0] = 0.5
    dev = cache_repo(hub["home"], REPO, {DEFAULT_FILE: other.save(hub["home"].parent / "o.safetensors").read_bytes(),
                                         "masks/hi.json": b""}, revision="dev")
    assert torch.equal(HeadMask.load(REPO).values, mask.values)
    assert torch.equal(HeadMask.load(f"{REPO}@{main}").values, mask.values)
    assert torch.equal(HeadMask.load(f"{REPO}@dev").values, other.values)
    assert torch.equal(HeadMask.load(REPO, revision=dev).values, other.values)
    assert torch.equal(HeadMask.load(f"{REPO}/{DEFAULT_FILE}").values, mask.values)
    path = resolve_mask_file(REPO)
    assert path.read_bytes() == files[DEFAULT_FILE] and f"snapshots/{main}" in path.as_posix()
    # what is not in the cache fails in one line that says what to do
    for ref, message in [("lahis-test/absent", "not in the local Hugging Face cache"),
                         (f"{REPO}/masks/none.safetensors", "not in the local Hugging Face cache"),
                         (f"{REPO}@v9", "not in the local Hugging Face cache")]:
        with pytest.raises(LahisError, match=message) as exc:
            HeadMask.load(ref)
        assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------- upload
def _lm_eval_results(tmp_path):
    """An lm-eval results file in lm-eval's own layout (results[task]['metric,filter'] and its _stderr)."""
    path = tmp_path / "results_2026.json"
    path.write_text(json.dumps({
        "results": {"xquad_de": {"alias": "xquad_de", "exact_match,none": 0.25, "exact_match_stderr,none": 0.05,
                                 "f1,none": 0.5, "f1_stderr,none": "N/A"}},
        "n-samples": {"xquad_de": {"original": 1190, "effective": 80}},
        "config": {"model": "lahis_hf", "model_args": "pretrained=/home/me/models/x,mask=lahis-test/de-mask"}}))
    return path


def _evaluate_folder(tmp_path, model, mask):
    from lahis_ctrl.corpora.xquad import load_qa
    from lahis_ctrl.eval.evaluate import evaluate_masks
    from tiny import tiny_tokenizer

    rows, _ = load_qa("de", "embedded")
    out = tmp_path / "evaluate"
    evaluate_masks(model, tiny_tokenizer(), "de", {"original": None, "lahis": mask}, rows[:6], max_new_tokens=3,
                   out_dir=out)
    return out


def test_push_commits_the_mask_card_and_adapter_then_reads_back_by_repo_id(hub, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM, PeftModel

    base = _base_model(hub)
    mask = _mask(base, method="lahis-soft-mask", extra={"epochs": 2, "lr": 0.01, "epoch_loss": [1.5, 1.25]})
    evaluation = [_evaluate_folder(tmp_path, base, mask), _lm_eval_results(tmp_path)]
    recorder, info = _push(monkeypatch, mask, evaluation=evaluation, private=True)
    # the calls that would reach the Hub: the repo, then ONE commit with every file
    assert [c[0] for c in recorder.calls] == ["create_repo", "create_commit"]
    assert recorder.calls[0][2]["private"] is True
    commit = recorder.commits[0]
    assert commit["repo_id"] == REPO and info.oid == commit["oid"]
    assert sorted(commit["files"]) == ["README.md", "adapter_config.json", "adapter_model.safetensors", DEFAULT_FILE]
    assert commit["files"][DEFAULT_FILE] == mask.save(tmp_path / "same.safetensors").read_bytes()
    adapter = json.loads(commit["files"]["adapter_config.json"])
    assert adapter["peft_type"] == "IA3" and adapter["base_model_name_or_path"] == BASE
    assert adapter["revision"] == hub["base_commit"]  # the base model's commit, from its cache folder
    assert adapter["target_modules"] == adapter["feedforward_modules"] == [
        "model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj", "model.layers.2.self_attn.o_proj"]

    card = commit["files"]["README.md"].decode()
    header = yaml.safe_load(card.split("---")[1])
    assert header["base_model"] == BASE and header["language"] == ["de"] and header["library_name"] == "peft"
    assert "lahis-ctrl" in header["tags"] and "ia3" in header["tags"]
    assert hub["base_commit"] in card and mask.model_identity["weights_fingerprint"] in card
    for layer, head in mask.changed_heads():  # every head changed, with its scale
        assert f"| {layer} | {head} | {float(mask.values[layer, head]):.6g} |" in card
    assert "`lahis-soft-mask`" in card and "| epochs | 2 |" in card and "2 epochs, last 1.2500" in card
    # the evaluation with intervals: lahis evaluate's own table, lm-eval's metrics +- 1.96 standard errors
    table = (evaluation[0] / "results.md").read_text()
    assert [line for line in table.splitlines() if line.startswith("| lahis |")][0] in card
    assert "| xquad_de | exact_match | 0.2500 | [0.1520, 0.3480] | 80 |" in card
    assert "rerun with bootstrap_iters > 0" in card and "/home/me" not in card and str(tmp_path) not in card
    for usage in (f'HeadMask.load("{REPO}")', f"pretrained={BASE},mask={REPO}", '"lahis_masks"', "vllm_xargs",
                  f'AutoPeftModelForCausalLM.from_pretrained("{REPO}")'):
        assert usage in card

    # back from the cache by repo id, offline: the same values, and the same outputs bit for bit
    recorder.publish_to_cache(hub["home"])
    loaded = HeadMask.load(REPO)
    assert torch.equal(loaded.values, mask.values) and loaded.facts() == mask.facts()
    x = torch.randint(3, 500, (2, 12))
    with torch.no_grad():
        with apply_head_mask(base, mask):
            want = base(x).logits
        with apply_head_mask(base, loaded):
            assert torch.equal(base(x).logits, want)
        assert (want - base(x).logits).abs().max() > 1e-2  # the mask matters
        peft_model = PeftModel.from_pretrained(_base_model(hub), REPO).eval()
        assert torch.equal(peft_model(x).logits, want)
        auto = AutoPeftModelForCausalLM.from_pretrained(REPO).eval()  # the base comes from the adapter's record
        assert torch.equal(auto(x).logits, want)


def test_lm_eval_mask_by_repo_id_equals_the_local_file(hub, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from lahis_ctrl.integrations.lm_eval.models import LahisHFLM

    base = _base_model(hub)
    mask = _mask(base)
    local = mask.save(tmp_path / "de.safetensors")
    recorder, _ = _push(monkeypatch, mask)
    recorder.publish_to_cache(hub["home"])
    pairs = [("Der schnelle braune", " Fuchs springt"), ("Paris is the capital", " of France.")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    results = {}
    for name, ref in (("repo", REPO), ("file", str(local)), ("none", None)):
        lm = LahisHFLM(pretrained=BASE, mask=ref, device="cpu", dtype="float32", batch_size=2)
        results[name] = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    assert results["repo"] == results["file"]  # bit for bit
    assert max(abs(a - b) for a, b in zip(results["repo"], results["none"])) > 1e-3


def test_push_refusals(hub, tmp_path, monkeypatch):
    local_model = tiny_model("llama")  # made from a local object: no Hub id for PEFT to load
    mask = _mask(local_model)
    recorder = Intercepted().install(monkeypatch)
    with pytest.raises(LahisError, match="push to a Hub repo id written org/name"):
        mask.push_to_hub("not-a-repo")
    with pytest.raises(LahisError, match="push to a Hub repo id"):
        mask.push_to_hub(f"{REPO}@dev")
    with pytest.raises(LahisError, match="changes no head"):
        HeadMask.ones(local_model).push_to_hub(REPO)
    with pytest.raises(LahisError, match="needs its base model's Hub id"):
        mask.push_to_hub(REPO, peft=True)
    with pytest.raises(LahisError, match="evaluation file not found"):
        mask.push_to_hub(REPO, evaluation=[tmp_path / "nope"])
    assert recorder.calls == []  # nothing reached the Hub
    # without a Hub id the mask and card still go up (no adapter); a branch is created first when named
    mask.push_to_hub(REPO, revision="dev")
    assert [c[0] for c in recorder.calls] == ["create_repo", "create_branch", "create_commit"]
    assert sorted(recorder.commits[0]["files"]) == ["README.md", DEFAULT_FILE]
    assert recorder.commits[0]["revision"] == "dev"


def test_cli_push_and_export_by_repo_id(hub, tmp_path, monkeypatch, capsys):
    from lahis_ctrl.cli import main

    base = _base_model(hub)
    mask_path = _mask(base).save(tmp_path / "de.safetensors")
    recorder = Intercepted().install(monkeypatch)
    assert main(["push", str(mask_path), REPO, "--evaluation", str(_lm_eval_results(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"https://huggingface.co/{REPO}/commit/[0-9a-f]{{40}}", out)
    assert sorted(recorder.commits[0]["files"]) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                    DEFAULT_FILE]
    recorder.publish_to_cache(hub["home"])
    # the repo id is a mask reference for every command
    assert main(["export", "--model", BASE, "--mask", REPO, "--out", str(tmp_path / "ia3"), "--format", "ia3"]) == 0
    assert json.loads((tmp_path / "ia3" / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE
    assert main(["export", "--model", BASE, "--mask", REPO, "--out", str(tmp_path / "folded")]) == 0
    # bad input: one line, exit 2, nothing sent
    n = len(recorder.calls)
    capsys.readouterr()
    assert main(["push", str(mask_path), "no-slash"]) == 2
    assert main(["push", str(tmp_path / "missing.safetensors"), REPO]) == 2
    assert main(["export", "--model", BASE, "--mask", "lahis-test/absent", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("lahis: error:") for line in err)
    assert "not in the local Hugging Face cache" in err[2]
    assert len(recorder.calls) == n and not (tmp_path / "x").exists()


def test_lahis_evaluate_takes_hub_references(tmp_path):
    from lahis_ctrl.eval.evaluate import parse_mask_args

    local = _mask(tiny_model("llama")).save(tmp_path / "de.safetensors")
    assert parse_mask_args(["none", f"hub={REPO}@v1", str(local), str(tmp_path)]) == {
        "original": None, "hub": f"{REPO}@v1", "de": str(local), tmp_path.name: str(tmp_path)}
    with pytest.raises(LahisError, match="mask file not found"):
        parse_mask_args([str(tmp_path / "missing.safetensors")])
