import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py

from tiny import tiny_model, tiny_tokenizer  # noqa: E402


def data_dir() -> Path | None:
    """Offline copies of XQuAD / NTREX-128 (CI sets LAHIS_DATA_DIR to ../shared/data)."""
    d = os.environ.get("LAHIS_DATA_DIR")
    return Path(d) if d and Path(d).is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    d = data_dir()
    if d is None:
        pytest.skip("LAHIS_DATA_DIR is not set (the README's test command sets it to ../shared/data)")
    return d


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def gemma():
    """The real Gemma 3 270M (slow tests only): (model, tokenizer), float32, eval mode."""
    from lahis_ctrl import load_model, load_tokenizer

    return load_model("gemma-3-270m", dtype="float32"), load_tokenizer("gemma-3-270m")


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (its tiny models gain nothing from more; the 2 cores are shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
