"""The package's shape: layered imports without cycles, short files and functions, importable in any order."""

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "jit_diffusion"

# Every module, lowest layer first. A module may import only modules that come before it in this list
# (which also rules out cycles). Layers: basic, model, data/io, commands (docs/architecture.md).
ORDER = [
    # basic
    "errors", "fileio", "device", "triton_kernels", "kernels", "rng", "config", "images", "distributed",
    "parallel", "flops",
    # model
    "layers", "flow", "frechet", "pretrained", "model", "ema", "solvers", "sampling",
    "pmf_config", "pmf_attention", "pmf_model", "pmf_official", "pmf_sampling", "meanflow", "pmf_optim",
    # data / io
    "emoji", "image_folder", "data_cache", "data", "checkpoint", "official", "diffusers", "diffusers_folder",
    "loading",
    # commands
    "generate", "sample_store", "sweep", "metrics", "classifier_net", "classifier_train", "classifier",
    "train_signals", "train_config", "train_flags", "train_optim", "graphed_step", "train_data", "train_state",
    "train_log", "train_health", "train_preview", "train", "evaluate", "toy_report", "toy", "convert", "cli",
    "__init__",
]  # fmt: skip
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PACKAGE.glob("*.py"))}


def package_imports(path: Path) -> set[str]:
    """Modules of the package imported anywhere in ``path`` (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("jit_diffusion"):
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("jit_diffusion."))
    return found


def test_every_module_has_a_layer():
    assert sorted(set(modules()) - set(ORDER)) == [], "add new modules to ORDER (and docs/architecture.md)"
    assert sorted(set(ORDER) - set(modules())) == []


def test_imports_go_only_downward():
    rank = {name: i for i, name in enumerate(ORDER)}
    upward = []
    for name, path in modules().items():
        for target in package_imports(path):
            if target in rank and rank[target] >= rank[name]:
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_the_checker_sees_an_upward_import(tmp_path):
    fake = tmp_path / "fileio.py"
    fake.write_text("def f():\n    from .train import Trainer\n")
    assert package_imports(fake) == {"train"}


@pytest.mark.slow
def test_every_module_imports_alone_in_any_order():
    names = [n for n in ORDER if n != "__init__"]
    random.Random(0).shuffle(names)
    for order in (names, list(reversed(names))):
        code = "import importlib\n" + "".join(f"importlib.import_module('jit_diffusion.{n}')\n" for n in order)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]


def test_files_and_functions_are_short():
    too_long = []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            too_long.append(f"{name}.py: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.py:{node.lineno} {node.name}: {length} lines")
    assert too_long == []
