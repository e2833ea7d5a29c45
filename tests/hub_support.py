"""The Hugging Face Hub without the network: a real huggingface_hub cache folder, and an HfApi whose upload calls are
intercepted where they would leave the machine.

* `cache_repo(hf_home, repo_id, files, revision)` writes the layout huggingface_hub itself keeps
  ($HF_HOME/hub/models--ORG--NAME/refs/<revision> holding a commit hash, snapshots/<commit>/<files>); with
  HF_HUB_OFFLINE=1, `hf_hub_download`, transformers and PEFT read repos from it as they would after a download.
* `offline_hub(monkeypatch, hf_home)`: this process reads that cache offline (environment and huggingface_hub's
  constants, which it reads at import time); `hub_env(hf_home)`: the same for a subprocess.
* `Intercepted`: stands in for HfApi's create_repo / create_branch / create_commit. It records the calls and the
  commit's operations (what would be uploaded, byte for byte) and answers the commit with the commit hash
  huggingface_hub's cache would then hold; nothing else of the Hub is imitated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def _commit_hash(files: dict[str, bytes]) -> str:
    h = hashlib.sha1()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name])
    return h.hexdigest()


def cache_repo(hf_home, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
    """Write `files` as the snapshot of `repo_id` at `revision` in the cache under `hf_home`; return the commit."""
    org, name = repo_id.split("/")
    repo = Path(hf_home) / "hub" / f"models--{org}--{name}"
    commit = _commit_hash(files)
    for path, data in files.items():
        target = repo / "snapshots" / commit / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


def folder_files(folder) -> dict[str, bytes]:
    """Every file of a folder (a saved model) as {relative path: bytes}."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hub_env(hf_home) -> dict[str, str]:
    return {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(Path(hf_home) / "hub"), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def offline_hub(monkeypatch, hf_home) -> None:
    import huggingface_hub.constants as constants

    for key, value in hub_env(hf_home).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(hf_home) / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    try:  # transformers keeps its own copy of the cache path
        import transformers.utils.hub as th

        monkeypatch.setattr(th, "HF_HUB_CACHE", str(Path(hf_home) / "hub"), raising=False)
    except ImportError:
        pass


class Intercepted:
    """Records HfApi upload calls instead of sending them (install with `install(monkeypatch)`)."""

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.commits: list[dict] = []

    def install(self, monkeypatch):
        from huggingface_hub import HfApi

        recorder = self

        def create_repo(api, repo_id, **kwargs):
            recorder.calls.append(("create_repo", (repo_id,), kwargs))
            return f"https://huggingface.co/{repo_id}"

        def create_branch(api, repo_id, **kwargs):
            recorder.calls.append(("create_branch", (repo_id,), kwargs))

        def create_commit(api, repo_id, operations, **kwargs):
            from huggingface_hub import CommitInfo

            files = {}
            for op in operations:
                data = op.path_or_fileobj
                files[op.path_in_repo] = data if isinstance(data, bytes) else Path(data).read_bytes()
            recorder.calls.append(("create_commit", (repo_id,), kwargs))
            oid = _commit_hash(files)
            recorder.commits.append({"repo_id": repo_id, "files": files, "oid": oid, **kwargs})
            return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
                              commit_message=kwargs.get("commit_message", ""), commit_description="", oid=oid)

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        return self

    def publish_to_cache(self, hf_home, revision: str = "main") -> str:
        """Put the last commit's files into the cache as huggingface_hub would after downloading them."""
        last = self.commits[-1]
        return cache_repo(hf_home, last["repo_id"], last["files"], revision)
