"""Layout is the architecture (issue 23): the top-level packages stand on floors
and a package imports only from floors below its own, never from beside or
above. pipelines/ knows nothing of training; the libraries above it (trainer/,
conversion/, reports/) know nothing of each other; nothing but benchmarks/
imports tools/, and nothing imports benchmarks/. tools/ holds commands only."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FLOORS = [
    ("pipelines",),                        # records on disk -> Batch on the device
    ("trainer", "conversion", "reports"),  # training; the converter's library; write-ups
    ("tools",),                            # commands: python -m tools.X
    ("benchmarks",),                       # measurements, which run the commands
]
FLOOR = {pkg: i for i, pkgs in enumerate(FLOORS) for pkg in pkgs}


def _imported(path: Path):
    """(line, top-level package) of every absolute import in the file, lazy ones too."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def test_every_package_stands_on_a_floor_and_is_installed():
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert found == set(FLOOR), f"on no floor: {sorted(found - set(FLOOR))}; " \
                                f"gone: {sorted(set(FLOOR) - found)}"
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(conf["tool"]["setuptools"]["packages"])
    assert set(FLOOR) <= listed, f"not in pyproject.toml: {sorted(set(FLOOR) - listed)}"


@pytest.mark.parametrize("pkg", list(FLOOR))
def test_a_package_imports_only_from_lower_floors(pkg):
    upward = []
    for path in sorted((ROOT / pkg).rglob("*.py")):
        for line, top in _imported(path):
            if top != pkg and top in FLOOR and FLOOR[top] >= FLOOR[pkg]:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert not upward, "\n".join(upward)


def test_tools_holds_only_commands():
    """Each module in tools/ runs as ``python -m tools.X``: a main and a __main__ guard.
    A module that is only imported belongs in a library package below."""
    not_commands = []
    for path in sorted((ROOT / "tools").glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        has_main = any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
        has_guard = any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)
                        for n in tree.body)
        if not (has_main and has_guard):
            not_commands.append(path.name)
    assert not not_commands, f"not commands: {not_commands}"
