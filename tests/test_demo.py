"""`lahis demo` end to end on a tiny model (the real run on Gemma is `lahis demo`; see docs/softmask.md)."""

from tiny import save_tiny

from lahis_ctrl.core.mask import HeadMask


def test_demo_runs_and_resumes(tmp_path, capsys):
    from lahis_ctrl.cli import main

    model_dir = save_tiny(tmp_path / "tiny", "llama")
    out = tmp_path / "demo"
    args = ["demo", "--model", str(model_dir), "--out", str(out), "--lang", "en", "--languages", "[en, de]",
            "--texts", "2", "--max_length", "32", "--epochs", "1", "--train_size", "2", "--test_size", "2",
            "--max_new_tokens", "3"]
    assert main(args) == 0
    text = capsys.readouterr().out
    for row in ("| original | 2 |", "| random | 2 |", "| lahis | 2 |"):
        assert row in text
    for p in ("demo_mask.safetensors", "sample.json", "scores/en.safetensors", "scores/de.safetensors", "heads.json",
              "masks/en-lahis.safetensors", "masks/en-random.safetensors", "eval/results.md", "eval/examples.jsonl"):
        assert (out / p).is_file(), p
    lahis = HeadMask.load(out / "masks" / "en-lahis.safetensors")
    assert lahis.method == "lahis-soft-mask" and len(lahis.changed_heads()) == 1
    before = (out / "masks" / "en-lahis.safetensors").stat().st_mtime_ns
    assert main(args) == 0  # finished steps are skipped
    again = capsys.readouterr().out
    assert "already trained" in again and "| lahis | 2 |" in again
    assert (out / "masks" / "en-lahis.safetensors").stat().st_mtime_ns == before
