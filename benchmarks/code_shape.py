"""The package's shape: module sizes, the longest functions, and import cycles.

Issue 20's figures, rerunnable: `python benchmarks/code_shape.py [--top N] [--json]`.
Counts physical lines (as `wc -l` does). A function's length runs from its `def` (decorators
included) to its last line. Imports are read statically, module level and inside functions alike,
since a function-level import still ties two modules together; `if TYPE_CHECKING:` imports are
left out (they never run). Also lists the modules that read the raw suite config: `config["key"]`
or `config.get("key")` on a name `config`, for a key of config.yaml's top level (which tells the
suite's config from a Hugging Face or task config also named `config`). Exits 1 when a limit of
issue 20 is broken, so CI could use it.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "pythia_suite"
MODULE_LIMIT = 900
FUNCTION_LIMIT = 80
CLI_LIMIT = 600
# Argument-parser tables are allowed to run long (issue 20).
PARSER_TABLES = {"build_parser"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def functions(tree: ast.AST) -> list[tuple[str, int]]:
    """Every function and method with its length in lines, qualified by class."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                found.append((prefix + child.name, child.end_lineno - start + 1))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return found


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's own modules this module imports (resolved to modules that exist)."""
    out: set[str] = set()
    skip = {id(n) for t in ast.walk(tree) if _type_checking_block(t) for n in ast.walk(t)}
    base = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                stem = ".".join(anchor + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def suite_config_keys() -> set[str]:
    """config.yaml's top-level keys (read as text: this script needs no YAML parser)."""
    lines = (ROOT / "config.yaml").read_text().splitlines()
    return {line.split(":")[0] for line in lines if line[:1].isalpha() and ":" in line}


def config_keys(tree: ast.AST) -> set[str]:
    """Top-level keys of the raw config a module reads: `config["key"]` or `config.get("key")`."""
    keys = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "config"
            and isinstance(node.slice, ast.Constant)
        ):
            keys.add(str(node.slice.value))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "config"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            keys.add(str(node.args[0].value))
    return keys


def measure() -> dict:
    paths = sorted(PACKAGE.rglob("*.py"))
    trees = {p: ast.parse(p.read_text(), filename=str(p)) for p in paths}
    known = {module_name(p) for p in paths}
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in paths}
    funcs = [
        (f"{module_name(p)}.{qual}", length)
        for p, tree in trees.items()
        for qual, length in functions(tree)
    ]
    graph = {
        module_name(p): imports(t, module_name(p), p.name == "__init__.py", known)
        for p, t in trees.items()
    }
    long_functions = sorted(
        [
            (q, n)
            for q, n in funcs
            if n > FUNCTION_LIMIT and q.rsplit(".", 1)[-1] not in PARSER_TABLES
        ],
        key=lambda item: -item[1],
    )
    return {
        "package_lines": sum(sizes.values()),
        "modules": len(sizes),
        "sizes": dict(sorted(sizes.items(), key=lambda item: -item[1])),
        "functions": sorted(funcs, key=lambda item: -item[1]),
        "long_functions": long_functions,
        "cycles": cycles(graph),
        "config_readers": {
            module_name(p): sorted(keys)
            for p, tree in trees.items()
            if (keys := config_keys(tree) & suite_config_keys())
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--top", type=int, default=15, help="how many modules and functions to list"
    )
    parser.add_argument("--json", action="store_true", help="print the whole measurement as JSON")
    args = parser.parse_args()
    shape = measure()
    if args.json:
        print(json.dumps(shape, indent=1))
    else:
        print(f"{shape['package_lines']} lines in {shape['modules']} modules")
        print(f"\nlargest modules (limit {MODULE_LIMIT}; cli {CLI_LIMIT}):")
        for name, lines in list(shape["sizes"].items())[: args.top]:
            print(f"  {lines:5d}  {name}")
        print(f"\nlongest functions (limit {FUNCTION_LIMIT}, parser tables exempt):")
        for name, lines in shape["functions"][: args.top]:
            print(f"  {lines:5d}  {name}")
        count = len(shape["long_functions"])
        print(f"\nfunctions over {FUNCTION_LIMIT} lines (parser tables exempt): {count}")
        print(f"import cycles: {shape['cycles'] or 'none'}")
        print("\nmodules reading the raw config (its top-level keys):")
        for name, keys in shape["config_readers"].items():
            print(f"  {name}: {', '.join(keys)}")
    over = [m for m, n in shape["sizes"].items() if n > MODULE_LIMIT]
    cli = shape["sizes"].get("pythia_suite.cli", 0)
    broken = bool(over or shape["long_functions"] or shape["cycles"] or cli >= CLI_LIMIT)
    if broken and not args.json:
        print(
            f"\nlimits broken: modules over {MODULE_LIMIT}: {over}; cli {cli} lines",
            file=sys.stderr,
        )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
