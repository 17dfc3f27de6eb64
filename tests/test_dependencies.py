"""Runtime dependencies are exactly what the runtime imports.

Every `import` in src/ of a module outside the standard library and
Postillion itself must come from a distribution declared in pyproject.toml's
`dependencies`, unless it is optional: imported inside a `try` that catches
ImportError (as uvloop is) and declared in an extra.  And every declared
runtime dependency must be imported by src/, so nothing is installed for a
feature that does not exist yet (that belongs in an extra).  Imports are read
with `ast`, and mapped to distributions with importlib.metadata.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "postillion"
IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError"})


@dataclass(frozen=True)
class Use:
    module: str      # top-level module name, as imported
    where: str       # file:line
    guarded: bool    # inside a try that catches ImportError


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, f"unreadable requirement {requirement!r} in pyproject.toml"
    return normalise(match.group(0))


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(k, ast.Name) and k.id in IMPORT_ERRORS for k in kinds)


class _Imports(ast.NodeVisitor):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.guarded = 0
        self.uses: list[Use] = []

    def visit_Try(self, node: ast.Try) -> None:
        guards = any(_catches_import_error(h) for h in node.handlers)
        self.guarded += guards
        for statement in node.body:
            self.visit(statement)
        self.guarded -= guards
        for part in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(part)

    def _use(self, module: str, node: ast.stmt) -> None:
        where = f"{self.path.relative_to(ROOT)}:{node.lineno}"
        self.uses.append(Use(module.split(".")[0], where, self.guarded > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._use(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._use(node.module, node)


def third_party_imports() -> list[Use]:
    uses = []
    for path in sorted(SRC.rglob("*.py")):
        visitor = _Imports(path)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        uses += [u for u in visitor.uses
                 if u.module != "postillion" and u.module not in sys.stdlib_module_names]
    return uses


def declared() -> tuple[set[str], set[str]]:
    """(runtime dependencies, distributions of the optional extras but `test`)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {requirement_name(r) for r in project.get("dependencies", [])}
    optional = {requirement_name(r)
                for extra, requirements in project.get("optional-dependencies", {}).items()
                if extra != "test" for r in requirements}
    return runtime, optional


def distributions(module: str) -> set[str]:
    found = importlib.metadata.packages_distributions().get(module)
    assert found, (f"{module} is imported by src/ but no installed distribution provides it:"
                   " declare it in pyproject.toml and run `make .venv/.installed`")
    return {normalise(d) for d in found}


def test_every_third_party_import_is_declared():
    runtime, optional = declared()
    problems = []
    for use in third_party_imports():
        dists = distributions(use.module)
        if dists & runtime:
            continue
        if use.guarded and dists & optional:
            continue
        why = ("an optional dependency imported without a try/except ImportError"
               if dists & optional else "not a declared runtime dependency")
        problems.append(f"{use.where}: import {use.module} ({', '.join(sorted(dists))}): {why}")
    assert not problems, "\n".join(problems)


def test_every_runtime_dependency_is_imported():
    runtime, _ = declared()
    imported: set[str] = set()
    for use in third_party_imports():
        if not use.guarded:
            imported |= distributions(use.module)
    unused = runtime - imported
    assert not unused, (f"declared in pyproject.toml dependencies but imported by nothing in"
                        f" src/: {', '.join(sorted(unused))} (move it to an extra)")


def test_optional_uvloop_is_guarded():
    """The one optional import today: the check above must see it as guarded."""
    uses = [u for u in third_party_imports() if u.module == "uvloop"]
    assert uses and all(u.guarded for u in uses)


def test_the_declared_license_file_exists():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "ISC"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("ISC License") and "The Postillion developers" in text
