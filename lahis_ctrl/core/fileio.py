"""Files: atomic writes (a crash, a full disk or Ctrl-C mid-write never leaves a half-written output in place, and
several files written together replace their old versions together or not at all), writes that keep what they do
not own (a symlink stays a link: its target is replaced; a file's mode is kept; line ends are written as given),
one text reader that names what is wrong with an input, the check that keeps outputs off inputs, and a lock that
keeps two runs off one output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping


def write_target(path: str | os.PathLike) -> Path:
    """Where a write to `path` lands: the final target of a symlink (the link itself is kept), else `path`."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _user_path_error(exc: OSError, tmp: Path, user: Path) -> OSError:
    """`exc` naming the user's path instead of an internal temporary one (and naming it at all when the OS did not,
    e.g. ENOSPC raised by write())."""
    def mapped(name):
        if name is None:
            return str(user)
        name = str(name)
        if name == str(tmp):
            return str(user)
        if name.startswith(str(tmp) + os.sep):  # a file inside a temporary folder: the same file in the user's
            return str(user / os.path.relpath(name, tmp))
        return name

    filename = mapped(exc.filename)
    if filename == exc.filename:
        return exc
    new = type(exc)(exc.errno, exc.strerror or str(exc), filename) if exc.errno is not None else \
        OSError(None, str(exc), filename)
    new.__cause__ = exc
    return new


def _cannot_create(exc: OSError, user: Path) -> OSError:
    """A failure to create `user` (or the temporary file beside it) as an OS error naming `user`; "not found"
    (ENOENT from a folder that takes no files, such as /proc) becomes a plain "cannot create"."""
    import errno

    for ancestor in user.parents:  # a file where a folder of the path should be (out=a_file/x.json)
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():
                return NotADirectoryError(errno.ENOTDIR, "Not a directory", str(ancestor))
            break
    if isinstance(exc, FileNotFoundError) and user.parent.is_dir():
        return PermissionError(errno.EACCES, f"cannot create a file in {user.parent}", str(user))
    return type(exc)(exc.errno, exc.strerror or str(exc), str(user)) if exc.errno is not None else \
        OSError(None, str(exc), str(user))


def _new_file_mode(existing: Path) -> int:
    """The mode a replaced file keeps, or the one a plain open() would give a new file (mkstemp makes 0600)."""
    try:
        return stat.S_IMODE(existing.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes. A symlink at `path` is
    kept and its target replaced; the replaced file's mode is kept. OS errors name `path`, never the temporary."""
    user = Path(path)
    path = write_target(user)
    tmp_path = path.parent / f".{path.name}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
    except OSError as exc:  # the folder takes no new file (read-only, /proc, full): name the user's file
        raise _cannot_create(exc, user) from exc
    try:
        with _naming_user_path(tmp_path, user):
            yield tmp_path
            if tmp_path.exists():
                os.chmod(tmp_path, _new_file_mode(path))
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def _naming_user_path(tmp: Path, user: Path) -> Iterator[None]:
    """An OS error about the temporary file or folder `tmp` is raised again naming the user's path instead."""
    try:
        yield
    except OSError as exc:
        error = _user_path_error(exc, tmp, user)
        if error is exc:
            raise
        raise error from exc


@contextlib.contextmanager
def replace_together(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `folder`: every file written into it replaces its namesake in `folder`, all
    of them only once the block has finished. A failure half-way (a full disk, an error in a plot) leaves `folder`
    exactly as it was, new files and old; files of `folder` that the block did not write are kept. OS errors name
    the files of `folder`, never the temporary folder."""
    user = Path(folder)
    folder = write_target(user)
    tmp = folder.parent / f".{folder.name}.tmp"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    except OSError as exc:
        raise _cannot_create(exc, user) from exc
    try:
        with _naming_user_path(tmp, user):
            yield tmp
            written = sorted(p for p in tmp.rglob("*") if p.is_file())
            folder.mkdir(parents=True, exist_ok=True)
            # renames within one file system need no new space: once every file is written, they all go in
            for src in written:
                dest = write_target(folder / src.relative_to(tmp))
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(src, _new_file_mode(dest))
                os.replace(src, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` as a Path when it is a regular file (or a link to one); otherwise one error saying what is there
    instead: nothing ("not found"), a folder, a named pipe, a socket or a device."""
    from .errors import LahisError

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise LahisError(f"{what} {path} is a broken symbolic link (its target {os.path.realpath(path)} is "
                             "missing)") from None
        raise LahisError(f"{what} not found: {path}") from None
    except NotADirectoryError:
        raise LahisError(f"{what} not found: {path} (a file is in the way where a folder is expected)") from None
    except PermissionError:
        raise LahisError(f"{what} {path} cannot be read: permission denied") from None
    if stat.S_ISREG(mode):
        return path
    kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
            "not a regular file")
    raise LahisError(f"{what} {path} is {kind}, not a file")


def check_input_dir(path: str | os.PathLike, what: str = "folder", hint: str = "") -> Path:
    """`path` as a Path when it is a folder (or a link to one); otherwise one error saying what is there instead:
    nothing ("not found"), or a file, a pipe... ("is a file, not a folder"). `hint` is added to the line."""
    from .errors import LahisError

    path = Path(path)
    if path.is_dir():
        return path
    hint = f" ({hint})" if hint else ""
    if not os.path.lexists(path):
        raise LahisError(f"{what} not found: {path}{hint}")
    try:
        check_input_file(path, what)
    except LahisError as exc:  # a pipe, a broken link...: say so
        raise LahisError(f"{exc}, not a folder{hint}".replace(", not a file, not a folder", ", not a folder")) \
            from None
    raise LahisError(f"{what} {path} is a file, not a folder{hint}")


# ---------------------------------------------------------------------------------------------- outputs vs inputs
def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder and path != folder
    except ValueError:  # different drives
        return False


def check_outputs_apart(outputs: Mapping[str, Iterable], inputs: Mapping[str, Iterable]) -> None:
    """Refuse an output that is an input, contains one (a folder above it) or lies inside an input folder:
    writing it could replace or mix with what the command reads. `outputs` / `inputs`: option name -> paths
    (inputs that do not exist, such as hub ids, are skipped). Symlinks are followed on both sides."""
    from .errors import LahisError

    for out_opt, out_paths in outputs.items():
        for out in out_paths:
            o = _real(out)
            for in_opt, in_paths in inputs.items():
                for source in in_paths:
                    if not os.path.lexists(os.path.expanduser(str(source))):
                        continue
                    i = _real(source)
                    if o == i:
                        why = f"is the input --{in_opt} itself"
                    elif _inside(i, o):
                        why = f"contains the input --{in_opt} {source}"
                    elif _inside(o, i) and os.path.isdir(i):
                        why = f"lies inside the input folder --{in_opt} {source}"
                    else:
                        continue
                    raise LahisError(f"--{out_opt} {out} {why}: writing there could replace or mix with what this "
                                     f"command reads; choose an output outside its inputs")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` atomically, its line ends exactly as given (no translation on any platform)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return Path(path)


_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
         b"\xfe\xff": "UTF-16"}


def decode_text(data: bytes, source: str | os.PathLike, what: str = "file", keep_line_ends: bool = False) -> str:
    """UTF-8 text of `data` (a UTF-8 BOM is dropped, CRLF and CR become LF; with `keep_line_ends` both stay, so the
    text written back is byte for byte what was read), or one clear error naming `source`: UTF-16/32 and binary inputs are refused, and bytes that are not UTF-8 are named by line and column, never
    replaced silently."""
    from .errors import LahisError

    for bom, name in _BOMS.items():
        if data.startswith(bom):
            raise LahisError(f"{what} {source} is {name} text: save it as UTF-8 and try again")
    if data.startswith(b"\xef\xbb\xbf") and not keep_line_ends:
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
    return text if keep_line_ends else text.replace("\r\n", "\n").replace("\r", "\n")


def read_text(path: str | os.PathLike, what: str = "file", keep_line_ends: bool = False) -> str:
    """A text file as UTF-8 (see decode_text), with one-line errors for a missing file, a folder or a pipe.
    `keep_line_ends`: CRLF / CR (and a BOM) stay as they are, for a file that is edited and written back
    (write_text writes line ends as given): only the edited part changes."""
    path = check_input_file(path, what)
    return decode_text(path.read_bytes(), path, what, keep_line_ends)


def line_end(text: str) -> str:
    """The line end a text uses ("\\r\\n", "\\r" or "\\n"): what lines added to it should end with."""
    if "\r\n" in text:
        return "\r\n"
    return "\r" if "\r" in text else "\n"


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
    (naming the live run) instead of mixing its files with the first's. The lock is filelock's OS file lock (POSIX
    and Windows), released when the process ends however it ends, so a crashed run never blocks the next one; who
    holds it is written beside it (`<name>.who`: acquiring a lock file may truncate it)."""
    from filelock import FileLock, Timeout

    from .errors import LahisError

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    who = folder / f"{name}.who"
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = who.read_text(encoding="utf-8").strip()
        except OSError:
            holder = ""
        raise LahisError(f"{folder} is in use by a running lahis job ({holder or 'another process'}): wait for it to "
                         "finish, or write to another output folder") from None
    try:
        who.write_text(f"pid {os.getpid()}: {what}", encoding="utf-8")
        yield folder
    finally:  # leave no trace: the lock files go, and the folder too if this run made it and wrote nothing
        who.unlink(missing_ok=True)
        lock.release()
        path.unlink(missing_ok=True)
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
