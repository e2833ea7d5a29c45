"""Files: atomic writes (a crash or Ctrl-C mid-write never leaves a half-written output in place), one text
reader that names what is wrong with an input's encoding, and a lock that keeps two runs off one output."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files: give the result the mode a plain open() would
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
         b"\xfe\xff": "UTF-16"}


def decode_text(data: bytes, source: str | os.PathLike, what: str = "file") -> str:
    """UTF-8 text of `data` (a UTF-8 BOM is dropped, CRLF and CR become LF), or one clear error naming `source`:
    UTF-16/32 and binary inputs are refused, and bytes that are not UTF-8 are named by line and column, never
    replaced silently."""
    from .errors import LahisError

    for bom, name in _BOMS.items():
        if data.startswith(bom):
            raise LahisError(f"{what} {source} is {name} text: save it as UTF-8 and try again")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\x00" in data[:8192]:
        raise LahisError(f"{what} {source} is a binary file (it holds NUL bytes), not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        guess = " (it looks like Latin-1 / Windows-1252)" if all(b >= 0x80 for b in data[exc.start:exc.end]) else ""
        raise LahisError(f"{what} {source} is not UTF-8: byte 0x{data[exc.start]:02x} at line {line}, column {column}"
                         f"{guess}; convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A text file as UTF-8 (see decode_text), with one-line errors for a missing file or a folder."""
    from .errors import LahisError

    path = Path(path)
    if path.is_dir():
        raise LahisError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise LahisError(f"{what} not found: {path}")
    return decode_text(path.read_bytes(), path, what)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a JSON file, with one-line errors naming the file (missing, not UTF-8, or invalid JSON and where)."""
    from .errors import LahisError

    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LahisError(f"{what} {path} is not valid JSON: {exc}") from exc


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


LOCK_NAME = ".lahis.lock"


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str = "lahis", name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` while the block runs: a second run on the same output refuses at once
    (naming the live run) instead of mixing its files with the first's. The lock is an OS file lock, released
    when the process ends however it ends, so a crashed run never blocks the next one."""
    from .errors import LahisError

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    handle = open(path, "a+", encoding="utf-8")
    locked = False
    try:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock (Windows users run one job per folder)
            pass
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise LahisError(f"{folder} is in use by a running lahis job ({holder}): wait for it to finish, or write "
                             "to another output folder") from None
        locked = True
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}: {what}")
        handle.flush()
        yield folder
    finally:
        if locked:  # leave no trace: the lock file goes, and the folder too if this run made it and wrote nothing
            path.unlink(missing_ok=True)
            if created and not any(folder.iterdir()):
                folder.rmdir()
        handle.close()
