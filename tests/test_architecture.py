"""The package's shape: layered imports without cycles, short files and functions, importable in any order."""

import ast
import importlib.util
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
    # data / io
    "emoji", "image_folder", "data_cache", "data", "checkpoint", "official", "diffusers", "diffusers_folder",
    "loading",
    # commands
    "generate", "sample_store", "sweep", "metrics", "classifier_net", "classifier_train", "classifier",
    "train_signals", "train_config", "train_flags", "train_optim", "graphed_step", "train_data", "train_state",
    "train_log", "train_health", "train_preview", "train", "evaluate", "toy_report", "toy", "convert",
    "studio.limits", "studio.runs", "studio.session", "studio.app", "studio.__init__", "studio_command", "cli",
    "__init__",
]  # fmt: skip
SUBPACKAGES = ("studio",)  # their modules are named "package.module" in ORDER
OPTIONAL = {"studio.app": "gradio"}  # modules that need an optional extra to import
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    found = {p.stem: p for p in sorted(PACKAGE.glob("*.py"))}
    for sub in SUBPACKAGES:
        found.update({f"{sub}.{p.stem}": p for p in sorted((PACKAGE / sub).glob("*.py"))})
    return found


def _named(parts: list[str]) -> str:
    """The ORDER name of ``jit_diffusion.<parts>``: ``studio.app`` for a sub-package's module."""
    return ".".join(parts[:2]) if parts[0] in SUBPACKAGES and len(parts) > 1 else parts[0]


def package_imports(path: Path) -> set[str]:
    """Modules of the package imported anywhere in ``path`` (top level or inside functions)."""
    found = set()
    sub = [path.parent.name] if path.parent.name in SUBPACKAGES else []  # the file's package below the top
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's package (level 1) or the ones above it
                parts = [*sub[: max(len(sub) - node.level + 1, 0)], *(node.module or "").split(".")]
            elif node.module and node.module.startswith("jit_diffusion"):
                parts = node.module.split(".")[1:]
            else:
                continue
            parts = [p for p in parts if p]
            if not parts or parts in ([s] for s in SUBPACKAGES):  # from . import x, from .studio import x
                found.update(_named([*parts, alias.name]) for alias in node.names)
            else:
                found.add(_named(parts))
        elif isinstance(node, ast.Import):
            found.update(_named(a.name.split(".")[1:]) for a in node.names if a.name.startswith("jit_diffusion."))
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
    inside = tmp_path / "studio" / "limits.py"
    inside.parent.mkdir()
    inside.write_text("from .app import serve\nfrom ..cli import main\nfrom jit_diffusion.studio import runs\n")
    assert package_imports(inside) == {"studio.app", "cli", "studio.runs"}


@pytest.mark.slow
def test_every_module_imports_alone_in_any_order():
    names = [n.removesuffix(".__init__") for n in ORDER if n != "__init__"]
    names = [n for n in names if n not in OPTIONAL or importlib.util.find_spec(OPTIONAL[n]) is not None]
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
