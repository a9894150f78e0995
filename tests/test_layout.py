"""The repository's shape: the top level is the design card, and imports run one way.

Every project module's imports are read with `ast` (those inside functions too: a lazy import is
still a dependency), resolved to project modules, and checked against the layers, bottom first:

    kernels/     the fast paths: a leaf, imports only itself
    machine/     device, precision, progress, files, seeds: imports only itself
    data/        what users bring and what is done to scans: machine/
    method       tokenizer.py, masking.py, encoder.py, losses.py: kernels/, machine/, data/
    training/, evaluation/   the machinery around the method: everything above but the commands
    commands     train.py, probe.py, embed.py, finetune.py: anything but another command

and for cycles anywhere (bench/ included). A failure prints the offending import or the cycle.

    python -m pytest -q tests/test_layout.py
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = {"tokenizer", "masking", "encoder", "losses"}
COMMANDS = {"train", "probe", "embed", "finetune"}
FOLDERS = ("kernels", "machine", "data", "training", "evaluation", "bench")
# layer -> the layers it may import (its own included)
ALLOWED = {
    "kernels": {"kernels"},
    "machine": {"machine"},
    "data": {"machine", "data"},
    "method": {"kernels", "machine", "data", "method"},
    "training": {"kernels", "machine", "data", "method", "training", "evaluation"},
    "evaluation": {"kernels", "machine", "data", "method", "training", "evaluation"},
    "commands": {"kernels", "machine", "data", "method", "training", "evaluation"},
}


def project_modules():
    """{dotted module name: path} of every project source file (tests excluded)."""
    mods = {p.stem: p for p in ROOT.glob("*.py")}
    for folder in FOLDERS:
        for p in (ROOT / folder).glob("*.py"):
            mods[folder if p.stem == "__init__" else f"{folder}.{p.stem}"] = p
    return mods


def imports_of(name, path, mods):
    """The project modules `name` imports, anywhere in the file -> {module: line}."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                                      # relative: from . import x, from .a import b
                base = ".".join(filter(None, [package.rsplit(".", node.level - 1)[0], base]))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:                          # `import data.load` -> data.load; numpy -> none
                t = t.rpartition(".")[0]
            if t and t != name:
                found.setdefault(t, node.lineno)
    return found


def layer(name):
    top = name.split(".")[0]
    return "method" if top in METHOD else "commands" if top in COMMANDS else top


def import_graph():
    mods = project_modules()
    return {name: imports_of(name, path, mods) for name, path in mods.items()}


def find_cycle(graph):
    """One import cycle as a list of modules [a, b, ..., a], or None (depth-first search)."""
    state, stack = {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == "open":
                return stack[stack.index(v):] + [v]
            if v not in state:
                cycle = visit(v)
                if cycle:
                    return cycle
        stack.pop()
        state[u] = "done"
        return None

    for u in sorted(graph):
        if u not in state:
            cycle = visit(u)
            if cycle:
                return cycle
    return None


def layer_violations(graph):
    """Every import against the layers, as 'a (line n) imports b: layer -> layer'."""
    bad = []
    for a, targets in sorted(graph.items()):
        if layer(a) == "bench":                                  # measurements may import anything
            continue
        for b, line in sorted(targets.items()):
            if layer(b) not in ALLOWED[layer(a)]:
                bad.append(f"{a} (line {line}) imports {b}: {layer(a)} may not import {layer(b)}")
    return bad


def test_top_level_is_the_design_card():
    top = {p.stem for p in ROOT.glob("*.py")}
    assert top <= METHOD | COMMANDS, f"top-level files that belong in a folder: {sorted(top - METHOD - COMMANDS)}"
    assert METHOD | {"train", "probe", "embed"} <= top


def test_every_folder_names_its_files_in_reading_order():
    for folder in ("machine", "data", "training", "evaluation"):
        doc = ast.get_docstring(ast.parse((ROOT / folder / "__init__.py").read_text())) or ""
        files = sorted(p.name for p in (ROOT / folder).glob("*.py") if p.stem != "__init__")
        missing = [f for f in files if f"`{f}`" not in doc]
        assert not missing, f"{folder}/__init__.py does not name {missing}"


def test_imports_run_one_way():
    bad = layer_violations(import_graph())
    assert not bad, "imports against the layers:\n  " + "\n  ".join(bad)


def test_no_import_cycle():
    cycle = find_cycle({a: set(t) for a, t in import_graph().items()})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_a_cycle_and_an_upward_import():
    graph = {a: dict(t) for a, t in import_graph().items()}
    graph["data.load"]["probe"] = 1                              # data -> a command -> data: both rules break
    assert find_cycle({a: set(t) for a, t in graph.items()}) is not None
    assert any(v.startswith("data.load (line 1) imports probe") for v in layer_violations(graph))
    assert "data.load" in import_graph()["data.synthetic"]       # the graph sees real imports
