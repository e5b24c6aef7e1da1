"""The codebase's structure, kept true by reading the source (with `ast` and `tokenize`; nothing is imported).

- Layering: a module imports only from its own rank or a lower one (the table below), at module level and inside
  functions alike; imports under `if TYPE_CHECKING:` do not run, so they do not count.
- No import cycles among prefalign's modules, imports inside functions included: a lazy import cannot hide one.
- No function longer than 80 lines, from `def` (or its first decorator) to its last line.
- No `# type: ignore` or `# noqa` without a reason beside it, and no formatter escapes (`# fmt: skip`/`off`).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "prefalign"
MAX_FUNCTION_LINES = 80

# (module, or package with everything under it) -> rank. Lowest first; a module imports from its rank or lower only.
RANKS: dict[str, int] = {
    # 0 foundation: what every layer may use; it knows nothing about preference data or models.
    "prefalign": 0,  # the package's own __init__ (its version); not its subpackages, which have their own rank
    "prefalign.errors": 0,
    "prefalign.fileio": 0,
    "prefalign.preflight": 0,  # checks before work: outputs writable, inputs readable
    "prefalign.console": 0,
    "prefalign.config": 0,  # the dataclass -> argparse/YAML mechanism, not any command's settings
    "prefalign.stages": 0,
    "prefalign.text_metrics": 0,  # measures of a response's text (repetition), for data building and evaluation
    # 1 data: reading, checking and tokenizing preference data and prompts; no torch models.
    "prefalign.data": 1,
    "prefalign.prompts": 1,
    # 2 models: loading, LoRA, the reward model, and the one scoring module (log-probs, KL, implicit reward).
    "prefalign.models": 2,
    "prefalign.losses": 2,
    "prefalign.scoring": 2,
    # 3 generate: the one generation path, over a loaded model.
    "prefalign.generate": 3,
    # 4 train: the training loop and its objectives.
    "prefalign.train": 4,
    # 5 judges and pairs: comparing completions and building preference pairs from them.
    "prefalign.judges": 5,
    "prefalign.pairs": 5,
    # 6 evaluate: generating, judging and scoring models against each other, and the report.
    "prefalign.evaluate": 6,
    # 7 pipeline: the demo's stages, chaining everything above.
    "prefalign.pipeline": 7,
    # 8 cli: the commands, the only layer that knows about argv.
    "prefalign.cli": 8,
    "prefalign.__main__": 8,
}


def rank_of(module: str) -> int | None:
    """The rank of the longest RANKS entry that is `module` or a package above it (`prefalign` itself: exact only)."""
    best: tuple[int, int] | None = None
    for prefix, rank in RANKS.items():
        covers = module == prefix or (prefix != "prefalign" and module.startswith(prefix + "."))
        if covers and (best is None or len(prefix) > best[0]):
            best = (len(prefix), rank)
    return None if best is None else best[1]


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package's name maps to its __init__.py)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported prefalign module (a package stands for its __init__)
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{where(self.path, self.line)}: {self.source} imports {self.target}"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(nodes: list[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in `nodes`, inside functions and classes too, except the body of `if TYPE_CHECKING:`."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.orelse)
        else:
            yield from _import_nodes(list(ast.iter_child_nodes(node)))


def _resolve(module: str, name: str | None) -> str | None:
    """The prefalign module that `module` (dotted, absolute) names, or `module.name` when that is a submodule."""
    if name is not None and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module if module in MODULES else None


def imports_of(module: str, source: str | None = None) -> list[Import]:
    """The prefalign modules that `module` imports (at run time), with the line of each import. `source`: the
    module's text, when not the one on disk."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    source = path.read_text(encoding="utf-8") if source is None else source
    found = []
    for node in _import_nodes([ast.parse(source, filename=str(path))]):
        if isinstance(node, ast.Import):
            targets = [_resolve(alias.name, None) for alias in node.names]
        else:
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                absolute = ".".join(base + ([node.module] if node.module else []))
            else:
                absolute = node.module or ""
            targets = [_resolve(absolute, alias.name) for alias in node.names]
        for target in dict.fromkeys(targets):
            if target is not None and target != module:
                found.append(Import(module, target, path, node.lineno))
    return found


ALL_IMPORTS = [edge for module in MODULES for edge in imports_of(module)]


def test_the_import_reader_counts_what_runs() -> None:
    source = """
from typing import TYPE_CHECKING
from ..errors import DataError
from . import split
from .. import fileio, __version__
if TYPE_CHECKING:
    from ..train import loop
else:
    from .. import console
class Reader:
    def read(self):
        from ..generate import generate
        import prefalign.models.loading
"""
    found = {(edge.target, edge.line) for edge in imports_of("prefalign.data.loading", source)}
    assert found == {
        ("prefalign.errors", 3),
        ("prefalign.data.split", 4),
        ("prefalign.fileio", 5),
        ("prefalign", 5),  # __version__ is a name in the package's __init__
        ("prefalign.console", 9),
        ("prefalign.generate", 12),
        ("prefalign.models.loading", 13),
    }


def test_the_cycle_finder_names_the_chain() -> None:
    path = PACKAGE / "x.py"
    a_b, b_c, c_a, d_a = (Import(s, t, path, n) for n, (s, t) in enumerate(["ab", "bc", "ca", "da"], start=1))
    assert find_cycles([d_a, c_a, a_b, b_c]) == [[a_b, b_c, c_a]]
    assert find_cycles([d_a, a_b, b_c]) == []


def test_every_module_has_a_rank() -> None:
    unranked = [f"{where(path, 1)}: {module}" for module, path in MODULES.items() if rank_of(module) is None]
    if unranked:
        pytest.fail("modules missing from RANKS in tests/test_codebase.py:\n" + "\n".join(unranked), pytrace=False)


def test_imports_go_to_the_same_or_a_lower_rank() -> None:
    upward = []
    for edge in ALL_IMPORTS:
        source_rank, target_rank = rank_of(edge.source), rank_of(edge.target)
        if source_rank is not None and target_rank is not None and target_rank > source_rank:
            upward.append(f"{edge} (rank {source_rank} -> {target_rank})")
    if upward:
        pytest.fail(f"{len(upward)} imports go up a layer:\n" + "\n".join(upward), pytrace=False)


def find_cycles(imports: list[Import]) -> list[list[Import]]:
    """One cycle (as its chain of imports) through each strongly connected group of modules (Tarjan's algorithm)."""
    edges: dict[str, list[Import]] = {}
    for edge in imports:
        edges.setdefault(edge.source, []).append(edge)
        edges.setdefault(edge.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for edge in edges[module]:
            if edge.target not in index:
                visit(edge.target)
                low[module] = min(low[module], low[edge.target])
            elif edge.target in stack:
                low[module] = min(low[module], index[edge.target])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return [_chain(min(group), group, edges) for group in groups]


def _chain(start: str, group: set[str], edges: dict[str, list[Import]]) -> list[Import]:
    """The shortest cycle from `start` back to itself inside `group` (breadth-first)."""
    came_from: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for edge in edges[module]:
                if edge.target not in group:
                    continue
                if edge.target == start:
                    chain = [edge]
                    while chain[0].source != start:
                        chain.insert(0, came_from[chain[0].source])
                    return chain
                if edge.target not in came_from:
                    came_from[edge.target] = edge
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group always has one


def test_no_import_cycles() -> None:
    cycles = find_cycles(ALL_IMPORTS)
    report = []
    for chain in cycles:
        report.append(" -> ".join([chain[0].source] + [edge.target for edge in chain]))
        report.extend(f"    {edge}" for edge in chain)
    if cycles:
        pytest.fail(
            f"{len(cycles)} import cycles (imports inside functions count):\n" + "\n".join(report), pytrace=False
        )


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                length = node.end_lineno - start + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{where(path, node.lineno)}: {node.name} is {length} lines")
    if long:
        pytest.fail(f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long), pytrace=False)


# A suppression directive with its codes: mypy's type-ignore (with or without [codes]), and the noqa of flake8 and
# ruff, line-wide or file-wide, with or without codes. (Spelled out in words here: ruff would obey them as comments.)
SUPPRESSION = re.compile(
    r"#\s*(?:type:\s*ignore(?:\[[^\]]*\])?|(?:ruff:\s*)?noqa(?::\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*)?)"
)
FORMATTER_ESCAPE = re.compile(r"#\s*fmt:\s*(?:skip|off|on)\b")


def has_reason(comment: str) -> bool:
    """A reason is prose in the same comment as the directives: at least two words once they are taken out, however
    it is set off (`# type: ignore[arg-type]  # hf stubs say str`, `# noqa: SIM115  (held open for the run)`)."""
    return len(re.findall(r"[A-Za-z]{2,}", SUPPRESSION.sub("", comment))) >= 2


def comments(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of each comment in a Python file; strings that look like comments are not comments."""
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string


def python_files() -> list[Path]:
    """Everything ruff checks: the package, the tests and the benchmarks."""
    return sorted(p for folder in ("src", "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py"))


def test_what_counts_as_a_reason() -> None:
    ignore, noqa = "# type" + ": ignore", "# no" + "qa"  # split, so that ruff does not read them as directives here
    assert not has_reason(f"{ignore}[arg-type]")
    assert not has_reason(f"{ignore}[arg-type]  # ok")
    assert not has_reason(f"{noqa}: F401, E501")
    assert has_reason(f"{ignore}[arg-type]  # hf stubs say str")
    assert has_reason(f"{noqa}: SIM115  (held open for the run)")
    assert SUPPRESSION.search(f"{noqa}") and SUPPRESSION.search(f"{ignore}")


def test_every_suppression_says_why() -> None:
    bare = []
    for path in python_files():
        for line, comment in comments(path):
            if SUPPRESSION.search(comment) and not has_reason(comment):
                bare.append(f"{where(path, line)}: {comment}")
    if bare:
        pytest.fail("suppressions without a reason beside them:\n" + "\n".join(bare), pytrace=False)


def test_no_formatter_escapes() -> None:
    escapes = [
        f"{where(path, line)}: {comment}"
        for path in python_files()
        for line, comment in comments(path)
        if FORMATTER_ESCAPE.search(comment)
    ]
    if escapes:
        pytest.fail("the formatter's output is the format; remove these:\n" + "\n".join(escapes), pytrace=False)
