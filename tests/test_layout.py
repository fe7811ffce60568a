"""The flow of the house: audio -> manifests -> corpus -> datasets -> models/losses/metrics ->
training stages -> checkpoints and model files -> evaluation -> the drivers. No module
imports from further down the flow (lazy imports inside functions included)."""

import ast
from pathlib import Path

import tsmixit

SRC = Path(tsmixit.__file__).parent

#: Layers in flow order; a module belongs to the longest prefix listed.
FLOW = [
    ("errors", "files", "cpu_memory"),
    ("audio",),
    ("data.manifest", "data.render", "data.importers"),
    ("corpus",),
    ("data", "data.datasets"),
    ("models", "losses", "metrics", "remixing"),
    ("training",),
    ("model_files", "inference"),
    ("evaluation",),
    ("recipe", "pretrain", "cli", ""),  # the drivers; "" is the __init__ (tsmixit.load_model)
]


def layer(module: str) -> int:
    """The layer of `module` (dotted, without the leading "tsmixit.")."""
    best, depth = None, -1
    for index, prefixes in enumerate(FLOW):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + ".") or prefix == "":
                n = len(prefix.split(".")) if prefix else 0
                if n > depth:
                    best, depth = index, n
    assert best is not None, module
    return best


def imports(path: Path) -> set[str]:
    """The tsmixit modules a file imports (absolute imports, anywhere in the file)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if not name.startswith("tsmixit."):
                continue
            target = SRC / Path(*name.split(".")[1:])
            if target.with_suffix(".py").is_file() or target.is_dir():
                out.add(name.removeprefix("tsmixit."))
    return out


def test_the_layer_function_on_hand_picked_modules():
    assert layer("data.render") < layer("corpus.build") < layer("data.datasets")
    assert layer("training.stages.label") < layer("model_files") < layer("evaluation.report")
    assert layer("cli") == layer("recipe") == len(FLOW) - 1


def test_no_module_imports_from_further_down_the_flow():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix("__init__")
        module = module.rstrip(".")
        for imported in imports(path):
            if layer(imported) > layer(module):
                upward.append(f"{module} imports {imported}")
    assert upward == []
