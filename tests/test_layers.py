"""The package's layers, written down once: imports run one way, from the CLI down to the math.

Every `import` and `from ... import` in src/dmmd (at any depth: a function-level import counts
the same) is read with `ast`. A module may import its own layer or a lower one; an import circle
between modules fails whatever the layers; a function-level import of a dmmd module is allowed
only where ALLOWED_LAZY says why. docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first; a module belongs to the longest prefix listed
LAYERS = [
    ("dmmd.openmp", "dmmd.version", "dmmd.schema", "dmmd.config", "dmmd.presets"),  # settings: nothing else from dmmd
    ("dmmd.math",),  # pure tensor math
    ("dmmd.nets",),  # backbones phi(x, t)
    ("dmmd.runtime",),  # run folders, checkpoints, devices, memory, distributed
    ("dmmd.data",),
    ("dmmd.methods",),  # DMMD and the baselines
    ("dmmd.evaluation",),
    ("dmmd.training",),
    ("dmmd.apps",),  # Pipeline, compare, inpaint, studies
    ("dmmd.cli",),
    ("dmmd", "dmmd.__main__", "dmmd.demo"),  # the package's front door
]

# function-level imports of dmmd modules, each with its reason
ALLOWED_LAZY = {
    "dmmd": "the public API loads torch on first use, after dmmd.openmp has set OMP_WAIT_POLICY",
}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer: add its folder to LAYERS and docs/architecture.md")
    return rank


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def read_imports(path: Path, modules: set[str], src: Path = SRC) -> list[tuple[str, int, bool]]:
    """(imported dmmd module, line, inside a function) for every import in the file."""
    module = module_name(path, src)
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names if a.name.split(".")[0] == "dmmd")
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(child, module, path.name == "__init__.py")
                if base.split(".")[0] != "dmmd":
                    continue
                for a in child.names:  # `from dmmd.x import y` imports the module dmmd.x.y when there is one
                    target = f"{base}.{a.name}"
                    found.append((target if target in modules else base, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return [(m, line, lazy) for m, line, lazy in found if m != module]


def import_graph(src: Path = SRC) -> tuple[dict[str, Path], dict[str, list[tuple[str, int, bool]]]]:
    files = {module_name(p, src): p for p in sorted((src / "dmmd").rglob("*.py"))}
    return files, {m: read_imports(p, set(files), src) for m, p in files.items()}


def upward_imports(graph) -> list[str]:
    return [f"{m} (layer {LAYERS[layer_of(m)][0]}) imports {t} (layer {LAYERS[layer_of(t)][0]}), line {line}"
            for m, edges in graph.items() for t, line, _ in edges if layer_of(t) > layer_of(m)]


def circles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in graph.get(v, []):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def lazy_imports(graph) -> list[str]:
    return [f"{m} imports {t} inside a function, line {line}" for m, edges in graph.items()
            for t, line, lazy in edges if lazy and m not in ALLOWED_LAZY]


def test_every_module_has_a_layer():
    files, _ = import_graph()
    for module in files:
        layer_of(module)


def test_imports_run_down_the_layers():
    _, graph = import_graph()
    assert upward_imports(graph) == []


def test_no_import_circles():
    _, graph = import_graph()
    assert circles(graph) == []


def test_no_function_level_imports_of_dmmd_modules():
    _, graph = import_graph()
    assert lazy_imports(graph) == []


MAX_LINES = 420  # "about 400": a module a reader takes in at one sitting


def test_modules_stay_readable():
    files, _ = import_graph()
    long = {m: n for m, p in files.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.fixture
def planted(tmp_path):
    """A copy of the package with one planted import, to show the checks can fail."""
    import shutil

    shutil.copytree(SRC / "dmmd", tmp_path / "dmmd", ignore=shutil.ignore_patterns("*.safetensors", "__pycache__"))

    def plant(relpath: str, line: str) -> dict:
        path = tmp_path / "dmmd" / relpath
        path.write_text(path.read_text() + "\n" + line + "\n")
        return import_graph(tmp_path)[1]

    return plant


def test_a_planted_upward_import_fails(planted):
    graph = planted("math/divergences.py", "from dmmd.methods.sample import sample")
    assert any(p.startswith("dmmd.math.divergences (layer dmmd.math) imports dmmd.methods.sample")
               for p in upward_imports(graph))


def test_a_planted_circle_fails(planted):
    planted("math/divergences.py", "from dmmd.math import noising")
    graph = planted("math/noising.py", "from dmmd.math import divergences")
    assert ["dmmd.math.divergences", "dmmd.math.noising"] in circles(graph)


def test_a_planted_function_level_import_fails(planted):
    graph = planted("methods/losses.py", "def f():\n    from dmmd.math import noising\n    return noising")
    assert any(p.startswith("dmmd.methods.losses imports dmmd.math.noising inside a function") for p in lazy_imports(graph))
