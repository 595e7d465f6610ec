"""Print the shape of the `study` package: the longest functions and classes, and file sizes.

Used for issue 18's before/after figures: `python scripts/code_shape.py [--top N] [PACKAGE_DIR]`.
A function's length is its line span (`end_lineno - lineno + 1`, decorators excluded); methods
are listed as `Class.method`, and classes are listed on their own too.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def spans(path: Path, root: Path) -> list[tuple[int, str]]:
    """(lines, qualified name) for every function, method and class in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(root.parent).as_posix()
    found: list[tuple[int, str]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                kind = "class " if isinstance(child, ast.ClassDef) else ""
                found.append((child.end_lineno - child.lineno + 1, f"{rel}:{kind}{name}"))
                walk(child, f"{name}.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default="study")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    root = Path(args.package).resolve()
    files = sorted(root.rglob("*.py"))
    everything = [s for f in files for s in spans(f, root)]
    print(f"# longest functions and classes in {root.name}/ (lines)")
    for lines, name in sorted(everything, reverse=True)[: args.top]:
        print(f"{lines:6d}  {name}")
    print(f"\n# largest files in {root.name}/ (lines)")
    sizes = [(len(f.read_text(encoding="utf-8").splitlines()), f) for f in files]
    for lines, f in sorted(sizes, reverse=True)[: args.top]:
        print(f"{lines:6d}  {f.relative_to(root.parent).as_posix()}")
    print(f"{sum(n for n, _ in sizes):6d}  total in {len(files)} files")


if __name__ == "__main__":
    main()
