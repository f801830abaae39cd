"""What works on this machine, measured: the first command to run on a new GPU.

    python -m tools.doctor [--quick] [--json FILE] [--backends dali-gpu,ffcv]

Reports the environment (torch, CUDA, the GPU and its compute capability, DALI,
FFCV, Triton, timm), then for every loader backend installed:
- parity: one batch of every view rendered with its emitted parameters, each view
  against the reference renderer (PSNR, pipelines/parity.py) and held to the bounds
  the tests use;
- the last stage that ran (numba on a CPU device, one Triton launch per view on a
  GPU) and, for Triton, its first-batch self-check against the torch stage;
- the loader's rate alone (img/s);
- training through the loader against the model-only ceiling (one batch kept on the
  device), measured side by side, with the per-step finiteness check (the default)
  and without it: ResNet-50 at 224 px on a GPU, eager and compiled; the small ResNet
  at 32 px on a CPU.
Where Triton is installed, the photometric kernel is also compiled for a real GPU
target (this GPU's, or sm_90 without one) and its registers and spills are read:
every specialisation the loaders can launch, or with --quick the heaviest one.

A Markdown report goes to stdout (paste it into benchmarks/RESULTS.md, with the GPU
named), progress to stderr; ``--json FILE`` writes the same as JSON. Exit status 0
when every check passed, 1 when one failed, 2 for bad arguments. ``--quick``: a
smoke run (small ResNet, 32 px, few steps, eager only): 37 s on this project's
2-core CPU machine. The full run on a GPU is sized for a few minutes on an H100
(ResNet-50 built and compiled twice); it has not yet run on one.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from pipelines import cli, parity
from pipelines.build import LoaderConfig, available, build_loader


@dataclass(frozen=True)
class Settings:
    backbone: str
    size: int           # px, large views
    batch: int
    steps: int          # timed steps (and loader batches) per measurement
    warmup: int         # steps before timing: compilation, autotuning, read-ahead
    source: str         # synthetic JPEG size WxH for the rate and e2e measurements
    workers: int        # loader workers / threads
    modes: tuple[str, ...]
    repeats: int = 2    # interleaved repeats; figures are medians


QUICK = Settings("small", 32, 32, 4, 2, "64x64", 2, ("eager",), repeats=1)
FULL_CPU = Settings("small", 32, 64, 8, 3, "64x64", 2, ("eager", "compiled"))
FULL_GPU = Settings("resnet50", 224, 256, 12, 4, "500x375", 16, ("eager", "compiled"))
# Parity is checked where the bounds were measured: 160x120 images stored raw (every
# backend decodes the same pixels as the reference), views of 48 and 24 px, 16 a batch.
PARITY = dict(images=(160, 120), count=64, size=48, small_size=24, batch=16)
PACKAGES = ["torch", "torchvision", "triton", "ffcv", "timm", "numba", "numpy", "pillow"]


@dataclass
class Check:
    backend: str
    what: str
    ok: bool | None            # None: a measurement, nothing to pass or fail
    detail: str
    figures: dict = field(default_factory=dict)


def _say(msg: str) -> None:
    print(f"doctor: {msg}", file=sys.stderr, flush=True)


def environment() -> dict:
    env = {"python": platform.python_version(), "cpu_cores": os.cpu_count(),
           "cuda": torch.version.cuda, "gpu": None, "compute_capability": None}
    for p in PACKAGES:
        try:
            env[p] = md.version(p)
        except md.PackageNotFoundError:
            env[p] = None
    dali = [d for d in md.distributions() if (d.metadata["Name"] or "").startswith("nvidia-dali")]
    env["dali"] = f"{dali[0].version} ({dali[0].metadata['Name']})" if dali else None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        env["gpu"] = torch.cuda.get_device_name()
        env["compute_capability"] = f"sm_{major}{minor}"
    return env


def _dataset(root: Path, size: tuple[int, int], count: int, raw: bool, beton: bool) -> str:
    from tools import convert_dataset, make_synthetic

    make_synthetic.generate(root / "img", size, count, 0, seed=3, quiet=True)
    args = [str(root / "img"), "--split", "train", "--out", str(root / "conv"), "--quiet",
            *(["--write-mode", "raw"] if raw else []), *([] if beton else ["--no-beton"])]
    if convert_dataset.main(args):
        raise RuntimeError(f"converting the doctor's synthetic images in {root} failed")
    return str(root / "conv")


def parity_check(backend: str, data: str) -> list[Check]:
    """One batch with raw views against the reference; the stage that ran."""
    loader = build_loader(LoaderConfig(data=data, backend=backend, size=PARITY["size"],
                                       small_size=PARITY["small_size"],
                                       batch_size=PARITY["batch"], keep_raw=True, workers=2))
    loader.set_epoch(0)
    batch = next(iter(loader))
    ps = parity.view_psnrs(batch, loader.recipe, parity.sources(data))
    got, lo = parity.summary(ps), parity.BOUNDS[backend]
    fmt = (lambda x: "exact" if x == float("inf") else f"{x:.1f}")  # noqa: E731
    out = [Check(backend, "parity", parity.within(backend, ps),
                 f"PSNR min/p5/median {'/'.join(map(fmt, got))} dB "
                 f"(bound {'/'.join(map(fmt, lo))})",
                 {"psnr_min": got[0], "psnr_p5": got[1], "psnr_median": got[2]})]
    finish = getattr(loader, "finish", None)
    if finish is not None:  # dali and ffcv: the shared last stage (pipelines/batch.py)
        result = getattr(finish, "self_check_result", None)
        ok = None if result is None else not str(result).startswith("failed")
        out.append(Check(backend, "stage", ok, f"{finish.stage}"
                         + (f"; Triton self-check: {result}" if result else ""),
                         {"stage": finish.stage, "triton_check": result}))
    return out


def _compile_one(spec, arch: int) -> dict:
    from pipelines import triton_targets
    return {"spec": spec.name, **triton_targets.compile_for(spec, arch)}


def triton_compile(full: bool) -> Check:
    """The photometric kernel compiled for this GPU's target (sm_90 without one)
    and its resources read from the cubin: --quick, the heaviest specialisation;
    the full run, every specialisation the loaders can launch (192), on every
    core. A specialisation that does not compile fails the check; one that spills
    (bytes of local memory; tests/test_triton_targets.py holds the known ones) is
    named, not failed: its pixels are right, what it costs is for a GPU to time."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from pipelines import triton_targets

    arch = 90
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        arch = 10 * major + minor
    specs = triton_targets.specialisations() if full else [triton_targets.heaviest()]
    t0 = time.perf_counter()
    if len(specs) == 1:
        rows = [_compile_one(specs[0], arch)]
    else:  # separate processes: Triton's compile holds the GIL for much of its time
        with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=get_context("spawn")) as ex:
            rows = list(ex.map(_compile_one, specs, [arch] * len(specs)))
    dt = time.perf_counter() - t0
    spills = [r["spec"] for r in rows if r["local_bytes"]]
    regs = [r["registers"] for r in rows]
    what = (f"{len(rows)} specialisations" if full else f"heaviest ({rows[0]['spec']})")
    return Check("triton", f"compile sm_{arch}", True,
                 f"{what}: {min(regs)}-{max(regs)} registers, "
                 + (f"spills in {len(spills)}: {', '.join(spills)}" if spills
                    else "no local memory (no spills)") + f"; {dt:.1f} s",
                 {"arch": arch, "compiled": len(rows), "spills": spills,
                  "registers_max": max(regs), "rows": rows})


def _trainee(mode: str, s: Settings, recipe, check_finite: bool):
    from trainer import optim, systems
    from trainer.build import build_objective
    from trainer.config import Config
    from trainer.dist import Env
    from trainer.throughput import Trainee

    cfg = Config(data="-", method="simsiam", aux="augself", backbone=s.backbone, size=s.size,
                 probe=False, compile=mode == "compiled")
    sysm = systems.choose(cfg, Env())
    model, objective = systems.prepare(build_objective(cfg, recipe, 0), cfg, sysm, Env())
    model.train()
    opt = optim.build(objective.param_groups(), "sgd", 0.05, 0.9, 1e-4)
    return Trainee(model, objective, opt, sysm, check_finite=check_finite)


def speed_checks(backends: list[str], data: str, s: Settings) -> list[Check]:
    """Loader rate, and e2e against the ceiling with and without the finiteness
    check, per backend and mode; interleaved repeats, medians."""
    from trainer import systems
    from trainer.config import Config
    from trainer.dist import Env
    from trainer.throughput import ceiling, end_to_end, loader_rate

    sysm = systems.choose(Config(data="-"), Env())
    loaders = {b: build_loader(LoaderConfig(data=data, backend=b, size=s.size,
                                            batch_size=s.batch, workers=s.workers,
                                            device=str(sysm.device)), dtype=sysm.dtype)
               for b in backends}
    out = []
    for b, loader in loaders.items():
        rates = [loader_rate(loader, r, s.steps, s.warmup) for r in range(s.repeats)]
        out.append(Check(b, "loader", None, f"{statistics.median(rates):.0f} img/s",
                         {"img_per_s": statistics.median(rates)}))
    recipe = next(iter(loaders.values())).recipe
    for mode in s.modes:
        for check in (True, False):
            _say(f"training {s.backbone} at {s.size} px, {mode}, finiteness check "
                 f"{'on' if check else 'off'}")
            t = _trainee(mode, s, recipe, check)
            fixed = {}
            for b, loader in loaders.items():
                loader.set_epoch(10_000)
                fixed[b] = next(iter(loader))
            cells: dict[str, dict[str, list[float]]] = {b: {"e2e": [], "ceiling": []}
                                                        for b in loaders}
            for r in range(s.repeats):
                for b, loader in loaders.items():
                    c = ceiling(t, fixed[b], s.steps, s.warmup)
                    e, _ = end_to_end(t, loader, 100 + r, s.steps, s.warmup)
                    cells[b]["ceiling"].append(c)
                    cells[b]["e2e"].append(e)
            for b, cell in cells.items():
                e, c = statistics.median(cell["e2e"]), statistics.median(cell["ceiling"])
                ratio = statistics.median(x / y for x, y in zip(cell["e2e"], cell["ceiling"]))
                name = f"e2e {mode}" + ("" if check else ", no finiteness check")
                out.append(Check(b, name, None, f"{e:.0f} img/s, ceiling {c:.0f} img/s, "
                                 f"ratio {ratio:.2f}",
                                 {"e2e_img_per_s": e, "ceiling_img_per_s": c, "ratio": ratio,
                                  "mode": mode, "check_finite": check}))
    return out


def _guarded(backend: str, what: str, fn) -> list[Check]:
    """A check that raises is a failed check with its one-line reason; the others go on."""
    try:
        r = fn()
    except Exception as e:  # noqa: BLE001 - reported as a failure, the report goes on
        return [Check(backend, what, False, cli.one_line(f"{type(e).__name__}: {e}", 300))]
    return r if isinstance(r, list) else [r]


def report(env: dict, checks: list[Check], s: Settings) -> str:
    lines = ["## tools.doctor", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v if v is not None else '-'} |" for k, v in env.items()]
    lines += ["", f"Speed settings: {s.backbone} at {s.size} px, batch {s.batch}, "
              f"{s.steps} steps after {s.warmup} warm-up, {s.repeats} repeat(s), modes "
              f"{', '.join(s.modes)}; simsiam+augself.", "",
              "| backend | check | result | |", "|---|---|---|---|"]
    mark = {True: "pass", False: "**FAIL**", None: ""}
    lines += [f"| {c.backend} | {c.what} | {mark[c.ok]} | {c.detail} |" for c in checks]
    failed = [c for c in checks if c.ok is False]
    lines += ["", f"{len(failed)} failed" if failed else "every check passed"]
    return "\n".join(lines)


def _replaceable(path: Path) -> bool:
    """No file there, or a regular file holding a report of this tool's."""
    if not (path.exists() or path.is_symlink()):
        return True
    try:
        return path.is_file() and not path.is_symlink() and \
            json.loads(path.read_text()).get("tool") == "tools.doctor"
    except (OSError, ValueError, AttributeError):
        return False


def _write_json(path: Path, payload: dict) -> None:
    """Atomically, and only over a file this tool wrote: a user's file is never replaced."""
    if not _replaceable(path):  # checked at start too; something else put it there since
        raise RuntimeError(f"{path}: appeared during the run and was not written by "
                           "tools.doctor; not replaced")
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.doctor",
                                 description=__doc__.split("\n\n")[0],
                                 epilog="Exit status: 0 every check passed, 1 a check "
                                 "failed, 2 bad arguments.")
    ap.add_argument("--quick", action="store_true", help="smoke run, under a minute on a "
                    "2-core CPU: small ResNet at 32 px, batch 32, few steps, eager only")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="also write the report as JSON (a file this tool wrote is replaced; "
                    "any other existing file is refused)")
    ap.add_argument("--backends", default=None, help="comma-separated, default every "
                    f"installed one (here: {','.join(available())})")
    ap.add_argument("--steps", type=cli.ranged(cli.Range(1, 1000, integer=True), "--steps"), default=None,
                    help="timed steps per measurement, 1-1000 (default 4 quick, 8 on a CPU, "
                    "12 on a GPU)")
    cli.add_debug(ap)
    a = ap.parse_args(argv)
    here = available()
    backends = a.backends.split(",") if a.backends else here
    unknown = [b for b in backends if b not in here]
    if unknown:
        ap.error(f"--backends: {', '.join(unknown)} not installed here (installed: "
                 f"{', '.join(here)})")
    if a.json is not None and not a.json.parent.is_dir():
        ap.error(f"--json: {a.json.parent} is not a folder")
    if a.json is not None and not _replaceable(a.json):
        ap.error(f"--json: {a.json} exists and was not written by tools.doctor; choose "
                 "another file")
    s = QUICK if a.quick else (FULL_GPU if torch.cuda.is_available() else FULL_CPU)
    if a.steps:
        s = replace(s, steps=a.steps)
    env = environment()
    _say(f"{env['gpu'] or 'no GPU'}; backends {', '.join(backends)}")
    checks: list[Check] = []
    if importlib.util.find_spec("triton") is not None:
        _say("compiling the Triton kernel for a real GPU target")
        checks += _guarded("triton", "compile", lambda: triton_compile(not a.quick))
    with tempfile.TemporaryDirectory(prefix="doctor-") as tmp:
        beton = "ffcv" in backends
        _say("making and converting synthetic datasets")
        pdata = _dataset(Path(tmp, "parity"), PARITY["images"], PARITY["count"], True, beton)
        w, h = (int(x) for x in s.source.split("x"))
        sdata = _dataset(Path(tmp, "speed"), (w, h), s.batch * (s.warmup + s.steps + 1), False,
                         beton)
        for b in backends:
            _say(f"{b}: parity")
            checks += _guarded(b, "parity", lambda b=b: parity_check(b, pdata))
        checks += _guarded(",".join(backends), "speed", lambda: speed_checks(backends, sdata, s))
    text = report(env, checks, s)
    print(text)
    ok = all(c.ok is not False for c in checks)
    if a.json is not None:
        _write_json(a.json, {"tool": "tools.doctor", "ok": ok, "environment": env,
                             "settings": asdict(s), "checks": [asdict(c) for c in checks]})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(cli.run(main, "tools.doctor"))
