"""The training loop stays short (issue 23, finding 6): trainer/run.py sets up and
runs the loop, trainer/loop.py holds its per-step bookkeeping, and no function of
either grows past 90 lines again, so the loop keeps reading like one page."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ("trainer/run.py", "trainer/loop.py")
LIMIT = 90  # lines of one function, its def line to its last line


def _functions(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):  # methods and nested functions too
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("name", FILES)
def test_every_function_is_at_most_90_lines(name):
    found = list(_functions(ROOT / name))
    assert found, f"{name}: no function found"
    long = [f"{fn} (line {at}): {n} lines" for fn, at, n in found if n > LIMIT]
    assert not long, f"{name}: longer than {LIMIT} lines: {'; '.join(long)}"


def test_the_names_callers_use_stay_importable_from_trainer_run():
    from trainer import run
    for name in ("main", "train", "train_step", "resolve_preset", "Preempted", "NonFinite",
                 "EvaluationFailed", "_stop_on_signals", "_kept"):
        assert hasattr(run, name), name
