"""The import graph: the layers of pyproject.toml's import-linter contracts, and no cycle anywhere."""

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively: the components of more than one module (the import cycles)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(edges[w])))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles_including_function_level_imports():
    graph = grimp.build_graph("potstill")
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert strongly_connected(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def function_level_imports() -> list[tuple[str, int, str]]:
    """(file, line, text) of every import inside a function of the package."""
    import ast

    found = []
    for path in sorted((ROOT / "src" / "potstill").rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        found.append((path.relative_to(ROOT).as_posix(), sub.lineno, lines[sub.lineno - 1].strip()))
    return sorted(set(found))


def test_function_level_imports_only_defer_a_named_dependency():
    """An import inside a function is there to defer a heavy or optional dependency, and says which."""
    found = function_level_imports()
    assert found, "the scan found no function-level import at all: it is not looking"
    unexplained = [f"{f}:{n}: {text}" for f, n, text in found if "# defers" not in text]
    assert unexplained == []
    internal = [
        f"{f}:{n}: {text}"
        for f, n, text in found
        if text.startswith("from .")
        and "defers torch" not in text
        and "defers the" not in text
        and "defers vllm" not in text
    ]
    assert len(internal) <= 8, internal  # potstill's own modules are imported at the top, bar a few deferring torch
