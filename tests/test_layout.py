"""The package's shape, read from its source with `ast` (nothing is imported, so it takes no time):
every import names something that exists, no import cycle, imports go one way between layers,
and no module outgrows a screen or two.

Imports inside functions count: they run too, only later, and a cycle that waits for a call is
still a cycle. So do `if TYPE_CHECKING:` imports: the types of one module living in the other is
the tangle the layering is about.
"""

from __future__ import annotations

import ast
import functools
from collections import deque
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flowerft"
MAX_LINES = 330

# Lowest first. A module imports from its own group and from lower layers only: never from a
# higher layer, nor from another group of its own layer (serving does not import reporting, nor
# the reverse). A group is a subpackage, or a top-level module named in TOP_LEVEL_GROUPS; every
# other top-level module (errors, config, machine, precision, inference, ...) is "core".
LAYERS = (
    {"core"},
    {"runs"},
    {"backbones"},  # below model: model builds the classifier on a backbone
    {"model"},
    {"data"},
    {"training", "serving", "reporting"},
    {"cli"},
)
TOP_LEVEL_GROUPS = {"model": "model", "__main__": "cli"}

# The backbone registry is data (names, scalings, sizes) that the config's checks read: it imports
# only errors, so it sits in the core with config rather than above it with the other backbone modules.
MODULE_GROUPS = {"flowerft.backbones.registry": "core"}
# Imports that may break the rules (none today). The test fails once an exception is no longer
# needed, so that it is deleted rather than left to hide a new one.
KNOWN_EDGES: set[tuple[str, str]] = set()
KNOWN_LONG: set[str] = set()


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """{dotted name: file} of every module; a package is its __init__.py."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def is_package(name: str, files: dict[str, Path]) -> bool:
    return files[name].name == "__init__.py"


def top_level_names(tree: ast.Module) -> set[str]:
    """The names a module binds at its top level, including under `if` and `try`."""
    names, statements = set(), list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            statements += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                           *(s for handler in getattr(node, "handlers", []) for s in handler.body)]
    return names


@functools.cache
def imports(root: Path = PACKAGE):
    """(edges, unresolved, files): edges maps (importer, imported module) to the lines importing it;
    unresolved says 'file:line: what' for each import of a flowerft module or name that is not there;
    files maps each module to its file."""
    files = modules(root)
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in files.items()}
    defined = {name: top_level_names(tree) for name, tree in trees.items()}
    edges: dict[tuple[str, str], list[int]] = {}
    unresolved = []

    def where(name, node):
        return f"{files[name].relative_to(root.parent)}:{node.lineno}"

    for name, tree in trees.items():
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importer's package, up level - 1
                    package = name.split(".") if is_package(name, files) else name.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                targets = [(base, alias.name) for alias in node.names]
            for module, attribute in targets:
                if module.split(".")[0] != "flowerft":
                    continue
                if attribute and f"{module}.{attribute}" in files:
                    module = f"{module}.{attribute}"  # a submodule: the import is of that module
                elif module not in files:
                    unresolved.append(f"{where(name, node)}: no module {module}")
                    continue
                elif attribute and not {attribute, "*", "__getattr__"} & defined[module]:
                    unresolved.append(f"{where(name, node)}: {module} defines no {attribute}")
                    continue
                if module != name:
                    edges.setdefault((name, module), []).append(node.lineno)
    return edges, unresolved, files


def group(name: str, files: dict[str, Path]) -> str:
    if name in MODULE_GROUPS:
        return MODULE_GROUPS[name]
    parts = name.split(".")
    if len(parts) == 1:
        return "core"  # flowerft/__init__.py
    if len(parts) > 2 or is_package(name, files):
        return parts[1]
    return TOP_LEVEL_GROUPS.get(parts[1], "core")


def layer(group_name: str) -> int:
    for rank, groups in enumerate(LAYERS):
        if group_name in groups:
            return rank
    raise AssertionError(f"flowerft/{group_name} is in no layer: add it to LAYERS in {Path(__file__).name}")


def strongly_connected(edges) -> list[set[str]]:
    """The parts of the graph in which every module reaches every other (Tarjan's algorithm), if more than one."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    index, low, stack, on_stack, parts = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while v not in part:
                part.add(stack.pop())
            on_stack.difference_update(part)
            if len(part) > 1:
                parts.append(part)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return parts


def cycles(edges) -> list[list[str]]:
    """One shortest cycle in each strongly connected part: [a, b, ..., a]."""
    edges = set(edges)
    found = []
    for part in strongly_connected(edges):
        start = min(part)
        came_from, queue = {start: None}, deque([start])
        while queue:  # breadth first from start, inside the part, to a module importing start
            v = queue.popleft()
            if (v, start) in edges:
                path = [v]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                found.append([*reversed(path), start])
                break
            for w in sorted(w for w in part if (v, w) in edges and w not in came_from):
                came_from[w] = v
                queue.append(w)
    return found


def crosses_layers(edge, files) -> bool:
    """An import up, or across to another group of the importer's layer."""
    a, b = group(edge[0], files), group(edge[1], files)
    return a != b and layer(b) >= layer(a)


def described(edge, edges, files) -> str:
    a, b = edge
    lines = ",".join(str(n) for n in sorted(set(edges[edge])))
    return f"{files[a].relative_to(PACKAGE.parent)}:{lines} imports {b}"


def test_every_flowerft_import_names_a_module_or_a_name_it_defines():
    _, unresolved, _ = imports()
    assert not unresolved, "\n".join(unresolved)


def test_there_is_no_import_cycle():
    edges, _, files = imports()
    found = cycles(edge for edge in edges if edge not in KNOWN_EDGES)
    assert not found, "import cycles:\n" + "\n".join(
        " -> ".join(cycle) + "\n  " + "\n  ".join(described(e, edges, files) for e in zip(cycle, cycle[1:]))
        for cycle in found)


def test_imports_go_down_the_layers():
    edges, _, files = imports()
    wrong = [described(edge, edges, files) for edge in edges if crosses_layers(edge, files) and edge not in KNOWN_EDGES]
    assert not wrong, "imports up or across the layers:\n" + "\n".join(wrong)


def test_every_known_exception_is_still_needed():
    edges, _, files = imports()
    in_cycles = {edge for part in strongly_connected(edges) for edge in edges if {*edge} <= part}
    needed = {edge for edge in edges if crosses_layers(edge, files)} | in_cycles
    assert not KNOWN_EDGES - needed, f"delete from KNOWN_EDGES, no longer needed: {sorted(KNOWN_EDGES - needed)}"


def test_no_module_is_over_330_lines():
    lengths = {path.relative_to(PACKAGE).as_posix(): len(path.read_text().splitlines())
               for path in PACKAGE.rglob("*.py")}
    long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    new = {name: n for name, n in long.items() if name not in KNOWN_LONG}
    assert not new, f"over {MAX_LINES} lines: {new}"
    assert not KNOWN_LONG - long.keys(), f"delete from KNOWN_LONG, no longer over {MAX_LINES}: {KNOWN_LONG - long.keys()}"
