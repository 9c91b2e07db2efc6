"""The package's shape: layered packages without cycles, short files and functions, importable in any order."""

import ast
import importlib.util
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "jit_diffusion"

# Every sub-package, lowest layer first, with its modules in their order. A module may import modules of
# packages before its own, and modules listed before it in its own package (so there is no cycle); a
# package's __init__ comes after its modules. "" is the top package (its __init__: the Python API), which
# only the studio (a web page over the library) and the command line sit above. docs/architecture.md draws the
# same layers.
LAYERS = {
    "core": ["lazy", "errors", "fileio", "device", "triton_kernels", "kernels", "rng", "images", "distributed",
             "parallel"],
    "models": ["pmf_config", "config", "flops", "layers", "pretrained", "jit", "lora", "pmf_attention", "pmf",
               "families"],
    "diffusion": ["flow", "solvers", "sampling", "ema", "pmf_sampling", "generate", "meanflow"],
    "formats": ["checkpoint", "official", "pmf_official", "diffusers", "diffusers_folder", "lora", "loading",
                "convert"],
    "data": ["image_folder", "emoji", "cache", "datasets"],
    "train": ["signals", "perceptual", "config", "pmf_init", "init", "lora", "flags", "optim", "pmf_optim",
              "graphed_step", "draws", "state", "log", "health", "preview", "trainer"],
    "evaluation": ["frechet", "sweep", "sample_store", "metrics", "classifier_net", "classifier_train",
                   "classifier", "evaluate"],
    "editing": ["inputs", "operations"],
    "toy": ["report", "experiment"],
    "": [],
    "studio": ["limits", "runs", "session", "edits", "app"],
    "cli": ["train", "sample", "edit", "eval", "classifier", "data", "convert", "toy", "studio"],
}  # fmt: skip
OPTIONAL = {"studio.app": "gradio"}  # modules that import an optional extra
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60


def dotted(package: str, module: str) -> str:
    return ".".join(p for p in (package, module) if p)


# the command modules, then cli/__init__.py (the `jit` entry point), then cli/__main__.py (`python -m`)
ORDER = [dotted(pkg, m) for pkg, mods in LAYERS.items() for m in [*mods, "__init__"]] + ["cli.__main__"]


def modules() -> dict[str, Path]:
    """Dotted name below jit_diffusion (``core.fileio``, ``core.__init__``, ``__init__``) -> file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts)] = path
    return found


def package_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def resolve(parts: list[str], known: set[str]) -> str:
    """The module that ``jit_diffusion.<parts>`` names: a module, a package's __init__, or the nearest parent."""
    while parts:
        name = ".".join(parts)
        if name in known:
            return name
        if f"{name}.__init__" in known:
            return f"{name}.__init__"
        parts = parts[:-1]
    return "__init__"


def package_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of the package imported anywhere in module ``name`` at ``path`` (top level or inside functions)."""
    here = package_of(name).split(".") if package_of(name) else []
    targets = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1]
            if node.module:
                targets.append(base + node.module.split("."))
            else:
                targets += [base + [alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jit_diffusion":
            base = node.module.split(".")[1:]
            targets += [base + [alias.name] for alias in node.names] if not base else [base]
        elif isinstance(node, ast.Import):
            targets += [a.name.split(".")[1:] for a in node.names if a.name.startswith("jit_diffusion.")]
    return {resolve(t, known) for t in targets} - {name}


def import_edges() -> list[tuple[str, str]]:
    found = modules()
    return sorted({(name, t) for name, path in found.items() for t in package_imports(path, name, set(found))})


def package_graph() -> dict[str, set[str]]:
    """Package -> the packages it imports ("" is the top package)."""
    graph: dict[str, set[str]] = {pkg: set() for pkg in LAYERS}
    for name, target in import_edges():
        if package_of(name) != package_of(target):
            graph[package_of(name)].add(package_of(target))
    return graph


def test_every_module_has_a_layer():
    assert sorted(set(modules()) - set(ORDER)) == [], "add new modules to LAYERS (and docs/architecture.md)"
    assert sorted(set(ORDER) - set(modules())) == []


def test_every_package_says_its_job():
    for pkg in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / pkg / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()) >= 1, f"{pkg or 'jit_diffusion'}/__init__.py needs a docstring"


def test_packages_import_only_packages_below_them():
    rank = {pkg: i for i, pkg in enumerate(LAYERS)}
    graph = package_graph()
    for pkg, deps in graph.items():
        print(f"{pkg or 'jit_diffusion'} -> {', '.join(sorted(d or 'jit_diffusion' for d in deps)) or '-'}")
    upward = [f"{pkg} -> {dep}" for pkg, deps in graph.items() for dep in deps if rank[dep] >= rank[pkg]]
    assert upward == []


def test_modules_within_a_package_import_only_earlier_ones():
    rank = {name: i for i, name in enumerate(ORDER)}
    backward = [f"{name} imports {target}" for name, target in import_edges()
                if package_of(name) == package_of(target) and rank[target] >= rank[name]]  # fmt: skip
    assert backward == []


def test_the_checker_sees_an_upward_import(tmp_path):
    fake = tmp_path / "fileio.py"
    fake.write_text("def f():\n    from ..train.trainer import Trainer\n    from . import rng\n"
                    "    import jit_diffusion.formats.loading as ld\n    from jit_diffusion import evaluation\n")
    known = set(modules())
    assert package_imports(fake, "core.fileio", known) == {
        "train.trainer", "core.rng", "formats.loading", "evaluation.__init__"}  # fmt: skip
    rank = {pkg: i for i, pkg in enumerate(LAYERS)}
    assert rank[package_of("train.trainer")] > rank[package_of("core.fileio")]


@pytest.mark.slow
def test_every_module_imports_alone_in_any_order():
    names = [n.removesuffix(".__init__") for n in ORDER if n not in ("__init__", "cli.__main__")]
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


def test_package_exports_resolve():
    import importlib

    for pkg in LAYERS:
        if pkg == "cli":
            continue
        package = importlib.import_module(dotted("jit_diffusion", pkg))
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert missing == [], f"{package.__name__} exports names it does not have"


def test_readme_examples_import_only_the_top_package():
    readme = (PACKAGE.parents[1] / "README.md").read_text()
    blocks = readme.split("```python")[1:]
    assert blocks, "the README has a Python example"
    deep = [line.strip() for block in blocks for line in block.split("```")[0].splitlines()
            if re.match(r"\s*(from\s+jit_diffusion\.|import\s+jit_diffusion\.)", line)]  # fmt: skip
    assert deep == [], "README examples import from `jit_diffusion` only (its __init__ exports the API)"
