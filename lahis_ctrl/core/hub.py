"""Mask references: a local file or folder, or a repo on the Hugging Face Hub, resolved the way the ecosystem does.

A mask reference is one of
  * a local file (`de.safetensors`, `de.json`) or a folder holding `lahis_mask.safetensors` (what `lahis push`,
    `lahis export` and the adapters write);
  * a Hub repo id, `org/name`, optionally with a file inside it and a revision:
    `org/name`, `org/name/masks/de.safetensors`, `org/name@v1`, `org/name/de.json@<commit>`.
    A repo's default file is `lahis_mask.safetensors`.

Hub references are resolved with huggingface_hub's `hf_hub_download`: its cache (`HF_HOME`, `HF_HUB_CACHE`),
offline mode (`HF_HUB_OFFLINE=1` reads the cache only), token (`HF_TOKEN`, `hf auth login`, or `token=`) and
revisions (a branch, a tag or a commit hash) all behave as they do for models. A path that exists locally always
wins over a repo of the same spelling; a path that starts with `/`, `.` or `~` is never looked up on the Hub.

`push_mask` uploads a mask, its model card and (when the base model is a Hub id) an equivalent PEFT IA3 adapter
in ONE commit, so `HeadMask.load("org/name")`, `PeftModel.from_pretrained(model, "org/name")` and
`AutoPeftModelForCausalLM.from_pretrained("org/name")` all read the same repo.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .errors import LahisError

DEFAULT_FILE = "lahis_mask.safetensors"  # a repo's (and a folder's) mask file
MASK_SUFFIXES = (".safetensors", ".json")
CARD_FILE = "README.md"

# org/name[/path/inside/the/repo][@revision]; names as the Hub allows them (letters, digits, '-', '_', '.')
_HUB_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?P<file>(?:/[^@/]+)+)?(?:@(?P<rev>[^@]+))?$")
_SNAPSHOT = re.compile(r"[/\\]snapshots[/\\](?P<commit>[0-9a-f]{40})[/\\]")


@dataclass(frozen=True)
class MaskReference:
    """A parsed mask reference: a local path, or (repo_id, filename, revision) on the Hub."""

    text: str
    path: Optional[Path] = None  # local
    repo_id: Optional[str] = None  # Hub
    filename: str = DEFAULT_FILE
    revision: Optional[str] = None

    @property
    def is_hub(self) -> bool:
        return self.repo_id is not None

    def __str__(self) -> str:
        return self.text


def _looks_local(text: str) -> bool:
    return text.startswith(("/", ".", "~", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", text))


def parse_reference(ref) -> MaskReference:
    """Parse a mask reference without touching the network (see the module docstring for the forms)."""
    if isinstance(ref, MaskReference):
        return ref
    if not isinstance(ref, (str, os.PathLike)):
        raise TypeError(f"a mask reference is a path or a Hub repo id, got {type(ref).__name__}")
    text = os.fspath(ref).strip()
    if not text:
        raise LahisError("empty mask reference: give a mask file, a folder, or a Hub repo id (org/name)")
    local = Path(text).expanduser()
    if local.exists() or _looks_local(text):
        return MaskReference(text, path=local)
    m = _HUB_REF.match(text)
    # 'masks/de.safetensors' is a local file that is missing, not a repo named 'de.safetensors'
    if m is None or (m["file"] is None and m["repo"].lower().endswith(MASK_SUFFIXES + (".pth", ".pt"))):
        return MaskReference(text, path=local)
    filename = m["file"][1:] if m["file"] else DEFAULT_FILE
    return MaskReference(text, repo_id=m["repo"], filename=filename, revision=m["rev"])


def _local_file(ref: MaskReference) -> Path:
    path = ref.path
    if path.is_dir():
        for name in (DEFAULT_FILE, "lahis_mask.json"):
            if (path / name).is_file():
                return path / name
        raise LahisError(f"the folder {path} holds no {DEFAULT_FILE}: give the mask file itself")
    if not path.is_file():
        hub = _HUB_REF.match(ref.text)
        hint = "" if _looks_local(ref.text) or hub is None else \
            " (a Hub repo is written org/name, or org/name/FILE.safetensors for a file inside it)"
        from .fileio import check_input_file

        try:  # "not found" only when nothing is there; a pipe, a broken link... say what they are
            check_input_file(path, "head mask file")
        except LahisError as exc:
            raise LahisError(f"{exc}{hint}") from None
    return path


def resolve_mask_file(ref, token: Optional[str] = None, revision: Optional[str] = None) -> Path:
    """The local file a mask reference names, downloading a Hub file into huggingface_hub's cache when needed.

    `revision` overrides the reference's `@revision`; `token` defaults to huggingface_hub's own (HF_TOKEN, login).
    Every failure is one LahisError line that says what to do."""
    ref = parse_reference(ref)
    if not ref.is_hub:
        return _local_file(ref)
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hub_errors

    rev = revision or ref.revision
    where = f"'{ref.repo_id}'" + (f" @ {rev}" if rev else "")
    try:
        return Path(hf_hub_download(ref.repo_id, ref.filename, revision=rev, token=token))
    except hub_errors.LocalEntryNotFoundError:
        raise LahisError(
            f"the mask {ref.filename} of Hub repo {where} is not in the local Hugging Face cache and the Hub cannot be "
            "reached (HF_HUB_OFFLINE=1 or no connection): download it once online, or give a local file") from None
    except hub_errors.RevisionNotFoundError:
        raise LahisError(f"Hub repo '{ref.repo_id}' has no revision '{rev}' (a branch, tag or commit hash)") from None
    except hub_errors.GatedRepoError:
        raise LahisError(f"Hub repo {where} is gated: accept its terms on the Hub and log in (`hf auth login` or "
                         "HF_TOKEN)") from None
    except hub_errors.RepositoryNotFoundError:
        raise LahisError(f"no Hub repo {where} (or it is private: log in with `hf auth login` or set HF_TOKEN); "
                         f"if you meant a local file, {ref.text} does not exist") from None
    except hub_errors.EntryNotFoundError:
        raise LahisError(f"Hub repo {where} has no file '{ref.filename}': name the file, e.g. "
                         f"{ref.repo_id}/masks/de.safetensors") from None
    except hub_errors.HFValidationError as exc:
        raise LahisError(f"'{ref.text}' is neither a local file nor a valid Hub reference: {exc}") from None
    except (hub_errors.HfHubHTTPError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LahisError(f"could not fetch the mask from Hub repo {where}: {first}") from None


def hub_origin(path) -> Optional[dict]:
    """{"repo_id", "revision" (commit hash), "filename"} when `path` is a file in huggingface_hub's cache."""
    text = os.fspath(path)
    m = _SNAPSHOT.search(text)
    repo = re.search(r"models--(?P<org>[^/\\]+?)--(?P<name>[^/\\]+)[/\\]snapshots", text)
    if m is None or repo is None:
        return None
    return {"repo_id": f"{repo['org']}/{repo['name']}", "revision": m["commit"], "filename": text[m.end():]}


def cached_revision(repo_id: str) -> Optional[str]:
    """The commit of `repo_id`'s main revision in huggingface_hub's cache (None when it is not cached): what a
    model loaded by Hub id was read from, since transformers does not keep the commit on the loaded model."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid id, no cache: nothing known
        return None
    origin = hub_origin(path) if isinstance(path, str) else None
    return origin["revision"] if origin else None


def is_hub_id(text) -> bool:
    """True for a bare `org/name` that is not an existing local path (what `base_model` fields hold)."""
    if not isinstance(text, str) or not text:
        return False
    ref = parse_reference(text)
    return ref.is_hub and ref.filename == DEFAULT_FILE and ref.revision is None and "@" not in text


# ---------------------------------------------------------------------------------------------- upload
def push_mask(mask, repo_id: str, *, token: Optional[str] = None, revision: Optional[str] = None,
              private: Optional[bool] = None, create_pr: bool = False, commit_message: Optional[str] = None,
              evaluation: Sequence = (), base_model: Optional[str] = None, base_revision: Optional[str] = None,
              peft: Optional[bool] = None, api=None):
    """Upload `mask` to the Hub repo `repo_id` (created if missing) in one commit: `lahis_mask.safetensors`, a
    model card (README.md), and, when the base model is a Hub id, an equivalent PEFT IA3 adapter
    (adapter_config.json, adapter_model.safetensors) so PEFT loads the repo directly.

    Args:
        mask: a HeadMask or a mask reference.
        repo_id: `org/name` on the Hub.
        token: a Hub token (default: huggingface_hub's, from HF_TOKEN or `hf auth login`).
        revision: the branch to commit to (created from main when missing); default main.
        private: create the repo private (an existing repo keeps its visibility).
        create_pr: open a pull request instead of committing to the branch.
        evaluation: files whose results the card reports with intervals: `lahis evaluate` folders or their
            results.json, lm-eval results JSON files.
        base_model: the Hub id of the model the mask was made for (default: the one the mask records).
        base_revision: that model's commit (default: the one the mask records).
        peft: include the IA3 adapter (default: when the base model is a Hub id). True without a Hub id fails.
        api: a huggingface_hub.HfApi to use (default: a new one with `token`).
    Returns huggingface_hub's CommitInfo.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    from .card import mask_card, resolve_base
    from .mask import as_mask

    ref = parse_reference(repo_id)
    if not ref.is_hub or ref.filename != DEFAULT_FILE or ref.revision is not None:
        raise LahisError(f"push to a Hub repo id written org/name, not '{repo_id}' (give the branch as revision=)")
    mask = as_mask(mask)
    if mask.is_identity:
        raise LahisError("the mask changes no head (all ones): there is nothing to share")
    base, base_rev = resolve_base(mask, base_model, base_revision)
    if peft is None:
        peft = is_hub_id(base)
    elif peft and not is_hub_id(base):
        raise LahisError(f"a PEFT adapter on the Hub needs its base model's Hub id, and the mask records '{base}': "
                         "give base_model (--base_model org/name), or leave the adapter out (--peft false)")
    files: dict[str, bytes] = {DEFAULT_FILE: mask_bytes(mask)}
    if peft:
        from .export import ia3_adapter_files

        files.update(ia3_adapter_files(mask, base, base_revision=base_rev))
    files[CARD_FILE] = mask_card(mask, kind="hub", repo_id=ref.repo_id, base_model=base, base_revision=base_rev,
                                 evaluation=evaluation, files=sorted(files)).encode("utf-8")
    api = api or HfApi(token=token)
    api.create_repo(ref.repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and not create_pr:
        api.create_branch(ref.repo_id, branch=revision, exist_ok=True, repo_type="model")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in sorted(files.items())]
    heads = len(mask.changed_heads())
    message = commit_message or (f"lahis-ctrl head mask for {base or mask.model_name}"
                                 f"{' (' + mask.language + ')' if mask.language else ''}: {heads} heads changed")
    return api.create_commit(ref.repo_id, operations=operations, commit_message=message, revision=revision,
                             create_pr=create_pr, repo_type="model")


def mask_bytes(mask) -> bytes:
    """The bytes `mask.save(... .safetensors)` writes (sorted header: the same mask gives the same bytes)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lahis-mask-") as tmp:
        return mask.save(Path(tmp) / DEFAULT_FILE).read_bytes()

