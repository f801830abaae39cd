"""Mutation score of the core modules (issue 22): `make mutation`.

mutmut 3 (pinned in requirements-mutation.txt) reads one [tool.mutmut] table
and mutates into ./mutants; it has no notion of "this module against these
tests". So each module here runs in its own scratch copy of the project,
build/mutation/<name>/ (git-ignored, rebuilt every run), whose pyproject.toml
carries that module's [tool.mutmut] table: only_mutate = the module,
pytest_add_cli_args_test_selection = its fast tests. mutmut then runs, per
mutant, the selected tests that call the mutated function.

Settings every module shares, and why:
- process_isolation = forkserver, forkserver_warmup = import (heavy third-party
  imports only, never the project): each mutant's process imports the project
  afresh, so module-level code that calls a mutated function at import
  (``crop_box = make_crop_box(...)``) runs the mutant, and torch is not forked
  from a process that has run tests.
- NUMBA_DISABLE_JIT=1: numba cannot compile mutmut's trampolines (the mixer is
  njit-wrapped at import), and no compiled code, cached or not, can stand in
  for a mutant; NUMBA_CACHE_DIR points into the scratch dir regardless.
- one child at a time (--max-children, default 1): a 2-core machine shared
  with CI.

    python -m benchmarks.mutation                 # every module
    python -m benchmarks.mutation losses optim    # some
    python -m benchmarks.mutation --list          # the table below
    python -m benchmarks.mutation augself --only 'trainer.augself.x_rows__mutmut_*'

Prints one score row per module (killed + timeout over mutants run) and the
surviving mutants' names; ``mutmut show NAME`` in build/mutation/<name>/
prints a survivor's diff. Exit status 1 when a module is under --target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutation"
SAMPLING_TESTS = ["tests/test_pipeline_sampling.py::test_crop_sampler_matches_torchvision",
                  "tests/test_pipeline_sampling.py::test_rates_and_uniform_factors",
                  "tests/test_pipeline_sampling.py::test_counter_uniforms_equal_a_naive_lowbias32",
                  "tests/test_pipeline_sampling.py::test_crop_box_is_the_algorithm_written_out",
                  "tests/test_pipeline_sampling.py::test_crop_box_falls_back_to_the_centre_crop",
                  "tests/test_pipeline_sampling.py::"
                  "test_crop_params_are_the_boxes_fractions_of_the_source",
                  "tests/test_pipeline_sampling.py::"
                  "test_sample_rest_is_each_slot_drawn_as_the_recipe_says",
                  "tests/test_pipeline_order.py::test_batched_crop_boxes_equal_per_sample_crop_box"]


@dataclass(frozen=True)
class Module:
    name: str
    path: str
    tests: tuple[str, ...]
    only: tuple[str, ...] = ()  # mutant-name globs (a part of the file); empty: all of it


# AugSelf's target code: the parameter -> target functions and the head's
# targets(); not the head's layers (RowHeads, _MaskGrad, forward).
_AUGSELF_TARGETS = ("centre_and_size", "over_range", "value", "rows", "columns", "code_map",
                    "kinds", "finish", "targets")

MODULES = [
    Module("counter_rng", "pipelines/counter_rng.py", tuple(SAMPLING_TESTS)),
    Module("params", "pipelines/params.py", ("tests/test_params.py", "tests/test_aux.py")),
    Module("losses", "trainer/losses.py", ("tests/test_losses.py", "tests/test_losses_ddp.py")),
    Module("optim", "trainer/optim.py", ("tests/test_optim.py",)),
    Module("sampling", "pipelines/sampling.py", tuple(SAMPLING_TESTS)),
    Module("augself", "trainer/augself.py", ("tests/test_aux.py", "tests/test_augself_codes.py"),
           tuple(f"trainer.augself.x_{f}__mutmut_*" for f in _AUGSELF_TARGETS)
           + tuple(f"trainer.augself.xǁ{c}ǁ{m}__mutmut_*"
                   for c, m in (("AugSelf", "targets"), ("Row", "affine"), ("Row", "target"),
                                ("Row", "__post_init__")))),
    Module("reference", "pipelines/reference.py",
           ("tests/test_reference.py",
            "tests/test_pipeline_agreement.py::test_batched_photometric_equals_reference_ops")),
]

# Imported by the fork server before it forks a mutant's process: third-party
# only (a project module imported here would be the unmutated one for good).
PRELOAD = ["numpy", "torch", "torchvision", "torchvision.transforms.v2", "scipy.stats", "pytest"]

# mutmut's exit-code meanings (mutmut/stats.py), folded into the table's columns.
KILLED, SURVIVED, TIMEOUT = "killed", "survived", "timeout"


def _status(code) -> str:
    if code in (1, 3):
        return KILLED
    if code == 0:
        return SURVIVED
    if code in (36, 24, -24, 152, 255):
        return TIMEOUT
    if code is None:
        return "not checked"
    if code in (5, 33):
        return "no tests"
    if code in (-9, -11):
        return "segfault"
    return "suspicious"


def _toml_list(xs) -> str:
    return "[" + ", ".join(json.dumps(x) for x in xs) + "]"


def prepare(m: Module) -> Path:
    """A fresh scratch copy of the project for module m, its config written in."""
    d = WORK / m.name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("pipelines", "trainer", "tests"):
        shutil.copytree(ROOT / pkg, d / pkg, ignore=skip)
    (d / "preload.txt").write_text("\n".join(PRELOAD) + "\n")
    conf = (ROOT / "pyproject.toml").read_text()
    assert "[tool.mutmut]" not in conf, "the per-module table is written here, not there"
    conf += f"""
[tool.mutmut]
source_paths = ["pipelines", "trainer"]
only_mutate = {_toml_list([m.path])}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly"]
pytest_add_cli_args_test_selection = {_toml_list(m.tests)}
process_isolation = "forkserver"
forkserver_warmup = "import"
preload_modules_file = "preload.txt"
use_git_change_detection = false
"""
    (d / "pyproject.toml").write_text(conf)
    return d


def run(m: Module, children: int, mutmut: str) -> dict:
    d = prepare(m)
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", NUMBA_CACHE_DIR=str(d / "numba-cache"),
               OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    t0 = time.perf_counter()
    log = d / "mutmut.log"
    with open(log, "w") as f:
        rc = subprocess.call([mutmut, "run", "--max-children", str(children), *m.only],
                             cwd=d, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    meta = json.loads((d / "mutants" / (m.path + ".meta")).read_text()) \
        if (d / "mutants" / (m.path + ".meta")).exists() else {"exit_code_by_key": {}}
    codes = meta["exit_code_by_key"]
    if m.only:
        import fnmatch
        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, g) for g in m.only)}
    by = {}
    for k, v in codes.items():
        by.setdefault(_status(v), []).append(k)
    n_killed, n_to = len(by.get(KILLED, [])), len(by.get(TIMEOUT, []))
    judged = sum(len(v) for s, v in by.items() if s not in ("not checked",))
    return dict(module=m.path, mutants=len(codes), killed=n_killed, survived=len(by.get(SURVIVED, [])),
                timeout=n_to, other=judged - n_killed - n_to - len(by.get(SURVIVED, [])),
                score=100.0 * (n_killed + n_to) / judged if judged else 0.0,
                wall_s=wall, rc=rc, log=str(log.relative_to(ROOT)),
                survivors=sorted(by.get(SURVIVED, [])),
                others={s: sorted(v) for s, v in by.items() if s not in (KILLED, SURVIVED, TIMEOUT)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help="names from --list (default: all)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--max-children", type=int, default=1)
    ap.add_argument("--target", type=float, default=90.0, help="score %% a module must reach")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--only", action="append", default=[], metavar="GLOB",
                    help="with one module: run only the mutants named (globs, repeatable), "
                    "e.g. the survivors of a run after the tests that kill them; the score "
                    "printed is of those alone")
    a = ap.parse_args(argv)
    by_name = {m.name: m for m in MODULES}
    if a.list:
        for m in MODULES:
            print(f"{m.name:12s} {m.path:26s} {' '.join(m.tests)}")
        return 0
    unknown = [n for n in a.modules if n not in by_name]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; choose from {sorted(by_name)}")
    if a.only:
        if len(a.modules) != 1:
            ap.error("--only takes exactly one module")
        import dataclasses
        by_name[a.modules[0]] = dataclasses.replace(by_name[a.modules[0]], only=tuple(a.only))
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"
    rows = []
    for name in a.modules or [m.name for m in MODULES]:
        print(f"[mutation] {name} ...", flush=True)
        r = run(by_name[name], a.max_children, mutmut)
        rows.append(r)
        print(f"[mutation] {name}: {r['score']:.1f}% of {r['mutants']} in {r['wall_s']:.0f}s "
              f"(log {r['log']})", flush=True)
    print()
    print("| module | mutants | killed | survived | timeout | other | score | time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['survived']} | "
              f"{r['timeout']} | {r['other']} | {r['score']:.1f}% | {r['wall_s']:.0f} s |")
    for r in rows:
        for s in r["survivors"]:
            print(f"survived  {s}")
        for status, names in r["others"].items():
            for s in names:
                print(f"{status:9s} {s}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 1 if any(r["score"] < a.target or r["rc"] != 0 for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
