"""Nothing a user has is replaced by accident: outputs never land on inputs, multi-file outputs are replaced all
together or not at all, writes keep what they do not own (symlinks, line ends, file modes), and the messages name
the user's paths and what is really there.

Each kind is a table; the commands run in-process (`lahis_ctrl.cli.main`) and must exit 2 with one `lahis: error:`
line, leaving every file they were given byte for byte as it was."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path

import pytest
import torch

from lahis_ctrl.core import fileio
from lahis_ctrl.core.errors import LahisError, error_line


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else "link")
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A user's folder: a model, score files, a mask, an evaluation's examples, a corpus, a data folder."""
    from tiny import save_tiny, tiny_model

    from lahis_ctrl.core.mask import HeadMask
    from lahis_ctrl.lahis.scores import HeadScores

    d = tmp_path_factory.mktemp("user")
    save_tiny(d / "model", "llama")
    model = tiny_model("llama")
    (d / "sc").mkdir()
    for i, lang in enumerate(("en", "de")):
        v = torch.rand(3, 4, generator=torch.Generator().manual_seed(i))
        HeadScores(v, v, torch.ones(3, 4), language=lang, model_type="llama", head_dim=16,
                   num_texts=1).save(d / "sc" / f"{lang}.safetensors")
    (d / "ev").mkdir()
    HeadMask.from_heads(model, [(0, 1)], 0.0, language="en").save(d / "ev" / "m.safetensors")
    rows = [{"id": str(i), "mask": "original", "expected_lang": "en", "generation": "The capital of France is Paris."}
            for i in range(3)]
    (d / "ev" / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "ev2").mkdir()
    (d / "ev2" / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "corpus").mkdir()
    (d / "corpus" / "en.txt").write_text("A river runs through the old town.\n\nThe market opens at eight.\n")
    return d


# (case, argv with {d} for the user's folder, the phrase of the one line)
OVERLAPS = [
    ("heads out is a score file", ["heads", "{d}/sc", "--out", "{d}/sc/en.safetensors"], "lies inside the input folder"),
    ("heads out is its input", ["heads", "{d}/sc/en.safetensors", "--out", "{d}/sc/en.safetensors"],
     "is the input --scores itself"),
    ("heads out inside a glob's folder", ["heads", "{d}/sc/*.safetensors", "--out", "{d}/sc/heads.json"],
     "lies inside the input folder"),
    ("heads out holds a listed input", ["heads", "{d}/sc/en.safetensors,{d}/sc/de.safetensors", "--out", "{d}/sc"],
     "contains the input --scores"),
    ("plot into the scores", ["plot", "{d}/sc", "--out", "{d}/sc"], "is the input --scores itself"),
    ("plot above the scores", ["plot", "{d}/sc", "--out", "{d}"], "contains the input --scores"),
    ("audit out holds its input", ["audit", "{d}/ev/examples.jsonl", "--expected", "en", "--out", "{d}/ev", "--details"],
     "contains the input --input"),
    ("audit --metric lcb out holds its input", ["audit", "{d}/ev/examples.jsonl", "--metric", "lcb", "--out", "{d}/ev"],
     "contains the input --input"),
    ("audit out holds the compared run", ["audit", "{d}/ev/examples.jsonl", "--compare", "{d}/ev2/examples.jsonl",
                                          "--expected", "en", "--out", "{d}/ev2"], "contains the input --compare"),
    ("evaluate out holds a mask", ["evaluate", "--lang", "en", "--model", "{d}/model", "--data", "embedded",
                                   "--mask", "[none, m={d}/ev/m.safetensors]", "--out", "{d}/ev"],
     "contains the input --mask"),
    ("score out inside the corpus", ["score", "--model", "{d}/model", "--source", "{d}/corpus/{lang}.txt",
                                     "--languages", "en", "--max_length", "16", "--out", "{d}/corpus/scores"],
     "lies inside the input folder --source"),
    ("score out is the model", ["score", "--model", "{d}/model", "--languages", "en", "--max_length", "16",
                                "--out", "{d}/model"], "is the input --model itself"),
    ("ppl out is the scores", ["ppl", "{d}/sc", "--model", "{d}/model", "--max_length", "16", "--out", "{d}/sc"],
     "is the input --scores itself"),
    ("train-mask out is the scores", ["train-mask", "--lang", "en", "--model", "{d}/model", "--scores",
                                      "{d}/sc/en.safetensors", "--out", "{d}/sc/en.safetensors"],
     "is the input --scores itself"),
]


@pytest.mark.parametrize("case, argv, phrase", OVERLAPS, ids=[c[0] for c in OVERLAPS])
def test_an_output_on_an_input_is_refused_and_nothing_changes(world, capsys, case, argv, phrase):
    from lahis_ctrl.cli import main

    before = _snapshot(world)
    rc = main([a.replace("{d}", str(world)) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lahis: error:")]
    assert rc == 2 and len(err) == 1, err
    assert phrase in err[0] and "choose an output outside its inputs" in err[0], err[0]
    assert _snapshot(world) == before


def test_an_output_apart_from_its_inputs_is_written(world, tmp_path, capsys):
    from lahis_ctrl.cli import main

    assert main(["heads", str(world / "sc"), "--out", str(tmp_path / "heads.json")]) == 0
    assert json.loads((tmp_path / "heads.json").read_text())["languages"] == ["de", "en"]


# ------------------------------------------------------------------------------------------ all or nothing
@pytest.mark.parametrize("fail_at", ["heatmaps.png", "overlap.png", "layers.png"])
def test_plot_on_a_full_disk_keeps_every_old_plot(world, tmp_path, capsys, monkeypatch, fail_at):
    """`lahis plot` runs out of space at one of its three PNGs: the old three stay, no new one appears, the line
    names the user's file (not a temporary path) and says nothing was replaced."""
    from lahis_ctrl.cli import main

    out = tmp_path / "plots"
    assert main(["plot", str(world / "sc"), "--out", str(out)]) == 0
    (out / "mine.txt").write_text("a file of the user's in the plot folder\n")
    before = _snapshot(out)
    from lahis_ctrl.core import fileio as f

    real = f.atomic_path

    @contextlib.contextmanager
    def full_disk(path):  # the disk fills while this one file is written (write() names no file)
        with real(path) as tmp:
            yield tmp
            if Path(path).name == fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("lahis_ctrl.core.fileio.atomic_path", full_disk)
    capsys.readouterr()
    assert main(["plot", str(world / "sc"), "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lahis: error:")]
    assert len(err) == 1 and "no space left on the device" in err[0] and "nothing was replaced" in err[0]
    assert str(out / fail_at) in err[0] and ".tmp" not in err[0], err[0]
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["plots"]  # no temporary folder left behind


def test_replace_together_keeps_other_files_and_follows_a_linked_folder(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "old.png").write_bytes(b"old")
    (real / "keep.txt").write_bytes(b"keep")
    os.symlink(real, tmp_path / "link")
    with fileio.replace_together(tmp_path / "link") as staged:
        (staged / "old.png").write_bytes(b"new")
        (staged / "sub").mkdir()
        (staged / "sub" / "x.json").write_text("{}")
    assert (tmp_path / "link").is_symlink()
    assert {p.name: p.read_bytes() for p in real.iterdir() if p.is_file()} == {"old.png": b"new", "keep.txt": b"keep"}
    assert (real / "sub" / "x.json").read_text() == "{}"
    with pytest.raises(ValueError):
        with fileio.replace_together(real) as staged:
            (staged / "old.png").write_bytes(b"newer")
            raise ValueError("a plot failed")
    assert (real / "old.png").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


# ------------------------------------------------------------------------------------------ writes keep what they do not own
@pytest.mark.parametrize("raw", [b"# t\r\nline\r\n", b"# t\rline\r", b"# t\nline\n", b"\xef\xbb\xbf# t\r\nline\r\n",
                                 b"# mixed\r\nline\n"])
def test_an_edited_text_file_keeps_its_line_ends_and_bom(tmp_path, raw):
    path = tmp_path / "README.md"
    path.write_bytes(raw)
    text = fileio.read_text(path, keep_line_ends=True)
    fileio.write_text(path, text)
    assert path.read_bytes() == raw  # read and written back: byte for byte
    nl = fileio.line_end(text)
    fileio.write_text(path, text + "added" + nl)
    assert path.read_bytes() == raw + b"added" + nl.encode()


def test_writing_to_a_symlink_replaces_its_target_and_keeps_the_link_and_the_mode(tmp_path):
    target = tmp_path / "docs" / "README.md"
    target.parent.mkdir()
    target.write_text("old\n")
    os.chmod(target, 0o640)
    link = tmp_path / "README.md"
    os.symlink(os.path.relpath(target, tmp_path), link)
    fileio.write_text(link, "new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    assert (target.stat().st_mode & 0o777) == 0o640
    from lahis_ctrl.core.artifacts import save_tensors

    os.symlink("docs/m.safetensors", tmp_path / "m.safetensors")  # a dangling link: its target is created
    save_tensors(tmp_path / "m.safetensors", {"x": torch.ones(2)})
    assert (tmp_path / "m.safetensors").is_symlink() and (tmp_path / "docs" / "m.safetensors").is_file()


@pytest.mark.parametrize("out, phrase", [
    ("a_file/heads.json", "a_file: a file is in the way where a folder is expected"),
    ("a_file/sub/heads.json", "a_file: a file is in the way where a folder is expected"),
    ("a_folder.json", "a_folder.json is a folder where a file is expected"),
])
def test_an_output_path_blocked_by_a_file_or_a_folder_says_so(world, tmp_path, capsys, monkeypatch, out, phrase):
    from lahis_ctrl.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("mine\n")
    (tmp_path / "a_folder.json").mkdir()
    assert main(["heads", str(world / "sc"), "--out", out]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lahis: error:")]
    assert len(err) == 1 and err[0] == f"lahis: error: {phrase}", err
    assert (tmp_path / "a_file").read_text() == "mine\n" and not any((tmp_path / "a_folder.json").iterdir())


def test_os_errors_name_the_users_path_never_a_temporary_one(tmp_path):
    for raised in (OSError(errno.ENOSPC, "No space left on device"),  # write(): the OS names no file
                   PermissionError(errno.EACCES, "Permission denied")):
        with pytest.raises(OSError) as err:
            with fileio.atomic_path(tmp_path / "out.json") as tmp:
                raise type(raised)(raised.errno, raised.strerror, str(tmp))
        assert err.value.filename == str(tmp_path / "out.json")
        line = error_line(err.value)
        assert str(tmp_path / "out.json") in line and ".tmp" not in line
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ messages that do not mislead
@pytest.mark.parametrize("kind, phrase", [
    ("missing", "head mask file not found: "),
    ("folder", "is a folder, not a file"),
    ("named pipe", "is a named pipe (FIFO), not a file"),
    ("broken link", "is a broken symbolic link"),
    ("under a file", "a file is in the way where a folder is expected"),
])
def test_an_input_that_is_not_a_file_is_named_for_what_it_is(tmp_path, kind, phrase):
    from lahis_ctrl.core.mask import HeadMask
    from lahis_ctrl.lahis.scores import HeadScores

    path = tmp_path / "m.safetensors"
    if kind == "folder":
        path.mkdir()
    elif kind == "named pipe":
        os.mkfifo(path)
    elif kind == "broken link":
        os.symlink(tmp_path / "gone.safetensors", path)
    elif kind == "under a file":
        (tmp_path / "f").write_text("x")
        path = tmp_path / "f" / "m.safetensors"
    with pytest.raises(LahisError) as err:
        HeadMask.load(path)
    # a folder is a mask reference of its own (one holding lahis_mask.safetensors)
    mask_phrase = "holds no lahis_mask.safetensors" if kind == "folder" else phrase
    assert mask_phrase in str(err.value) and ("not found" in str(err.value)) == (kind in ("missing", "under a file"))
    with pytest.raises(LahisError) as err:  # the same words for every reader
        HeadScores.load(path)
    assert phrase.replace("head mask file", "LAHIS score file") in str(err.value)


@pytest.mark.parametrize("exc, phrase, absent", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device: free some space", "while writing :"),
    (OSError(errno.ENOSPC, "No space left on device", "/x/y.json"), "while writing /x/y.json", None),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/nowhere/data"), "not found: /nowhere/data", "file not"),
])
def test_error_lines_never_print_an_empty_path_or_call_a_folder_a_file(exc, phrase, absent):
    line = error_line(exc)
    assert phrase in line and (absent is None or absent not in line), line


def test_safetensors_full_disk_is_one_line():
    from safetensors import SafetensorError

    exc = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                          'left on device" })')
    from lahis_ctrl.core.errors import is_user_error

    assert is_user_error(exc)
    assert error_line(exc).startswith("no space left on the device while writing a safetensors file")


@pytest.mark.parametrize("kind, phrase", [
    ("missing", "XQuAD data directory not found: "),
    ("file", "is a file, not a folder"),
    ("named pipe", "is a named pipe (FIFO), not a folder"),
])
def test_a_data_folder_that_is_not_a_folder_is_named_for_what_it_is(tmp_path, capsys, kind, phrase):
    from lahis_ctrl.cli import main

    data = tmp_path / "data"
    if kind == "file":
        data.write_text("not a folder\n")
    elif kind == "named pipe":
        os.mkfifo(data)
    rc = main(["train-mask", "--lang", "de", "--pick", "random", "--data", str(data), "--out", str(tmp_path / "m.json")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lahis: error:")]
    assert rc == 2 and len(err) == 1 and phrase in err[0], err
