"""The package layout: lower layers never import higher ones, public names are never shadowed by submodules,
old module paths are aliases of the same module objects."""

import ast
import importlib
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import lahis_ctrl

PKG = Path(lahis_ctrl.__file__).parent
# the layers, lowest first: a module may import its own layer and the ones before it
LAYERS = ("core", "corpora", "lahis", "eval", "integrations", "experiments", "cli")
# modules that need vLLM installed to import (tested in the vLLM venv)
NEEDS_VLLM = {"lahis_ctrl.integrations.vllm.lm_eval_model"}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """Every lahis_ctrl module `path` imports (absolute names), with line numbers (function-level imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names] if not node.module or node.level else [target]
            found += [(t, node.lineno) for t in ([target] + names)]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
    return [(t, line) for t, line in found if t.startswith("lahis_ctrl.")]


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def test_lower_layers_never_import_higher_ones():
    bad = []
    for module, path in _modules():
        mine = _layer(module)
        if mine is None:
            continue
        for target, line in _imports(path, module):
            theirs = _layer(target)
            if theirs is not None and LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{path.relative_to(PKG.parent)}:{line} ({mine}) imports {target} ({theirs})")
    assert not bad, "\n".join(bad)


def test_every_module_has_a_layer_or_is_package_plumbing():
    loose = [m for m, _ in _modules() if _layer(m) is None and m not in
             ("lahis_ctrl", "lahis_ctrl._lazy", "lahis_ctrl.__main__")]
    assert not loose, loose


def test_public_names_are_never_shadowed_by_submodules():
    for info in pkgutil.walk_packages(lahis_ctrl.__path__, "lahis_ctrl."):
        if info.name not in NEEDS_VLLM and not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for name in list(lahis_ctrl.__all__) + list(lahis_ctrl._COMPAT):
        value = getattr(lahis_ctrl, name)
        assert not isinstance(value, types.ModuleType), f"lahis_ctrl.{name} is a module"
    importlib.import_module("lahis_ctrl.lahis.softmask")
    assert callable(lahis_ctrl.train_mask) and callable(lahis_ctrl.reproduce)
    assert set(dir(lahis_ctrl)) == set(lahis_ctrl.__all__)


@pytest.mark.parametrize("old, new", [
    ("lahis_ctrl.scoring", "lahis_ctrl.lahis.scoring"), ("lahis_ctrl.mask", "lahis_ctrl.core.mask"),
    ("lahis_ctrl.introspect", "lahis_ctrl.core.architecture"), ("lahis_ctrl.generation", "lahis_ctrl.core.lm"),
    ("lahis_ctrl.lm_eval_tasks", "lahis_ctrl.integrations.lm_eval.task_utils"),
    ("lahis_ctrl.vllm", "lahis_ctrl.integrations.vllm"), ("lahis_ctrl.vllm.plugin", "lahis_ctrl.integrations.vllm.plugin"),
    ("lahis_ctrl.vllm.lora", "lahis_ctrl.integrations.vllm.lora"), ("lahis_ctrl.lcb", "lahis_ctrl.eval.lcb"),
])
def test_old_module_paths_are_the_same_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    assert importlib.import_module(new).__spec__.name == new  # the alias does not rename the module


def test_old_from_imports_keep_working():
    from lahis_ctrl.corpora import load_texts
    from lahis_ctrl.scoring import HeadScores, score_heads
    from lahis_ctrl.vllm import CONFIG_KEY

    assert callable(score_heads) and HeadScores.__module__ == "lahis_ctrl.lahis.scores"
    assert callable(load_texts) and CONFIG_KEY == "lahis_mask"


def test_import_is_light_and_python_m_works(tmp_path):
    code = ("import sys, lahis_ctrl, lahis_ctrl.vllm, lahis_ctrl.integrations.lm_eval; "
            "print(sorted(m for m in ('torch', 'vllm', 'lm_eval', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == "[]"
    helped = subprocess.run([sys.executable, "-m", "lahis_ctrl", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "reproduce" in helped.stdout
