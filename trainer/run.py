"""The main job: pretrain a backbone with an SSL method (+ AugSelf / EquiMod).

    python -m trainer.run --data DIR --method simsiam --aux augself --out runs/x
    torchrun --nproc_per_node=2 -m trainer.run --data DIR ...   (DDP, one rank per device)
    python -m trainer.run --out runs/x --resume                  (continue after a kill)

The run folder gets config.json (resolved, with the git sha), metrics.jsonl,
checkpoint.pt (atomic, every --ckpt-every steps and at the end), backbone.pt
(the backbone as a plain state_dict) and, with --test-data, eval/<dataset>.json
(linear, kNN and colour probes; tools/evaluate.py for every task). While it runs,
metrics.jsonl has RankMe at every logged line (trainer/monitors.py) and, with
--test-data, an online kNN line at each epoch end (trainer/online_knn.py).

Exact resume: the data order and every augmentation draw are functions of
(seed, epoch, sample index, view) and the checkpoint holds every weight,
buffer (momentum encoders, MoCo's queue, BN statistics) and optimiser state,
so a killed-and-resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines import cli
from pipelines.build import LoaderConfig, build_loader
from pipelines.checks import DamagedSample
from pipelines.recipe import to_spec
from trainer import checkpoint, datasets, dist, optim, run_folder, systems
from trainer.build import build_objective, rotated_views
from trainer.config import Config, check_environment, from_argv, resolve_preset, to_dict
from trainer.loop import Loop, NonFinite, Run, epoch_end, log_line, save  # noqa: F401 - NonFinite
from trainer.loop import kept as _kept  # noqa: F401 - importable from here, as before
from trainer.monitors import RankMe
from trainer.online_knn import OnlineKnn
from trainer.runlog import Metrics, progress_bar, write_config
from trainer.step import train_step  # noqa: F401 - train_step: also for tools, benchmarks
from trainer.watch import Watch


@contextlib.contextmanager
def _stop_on_signals():
    """SIGTERM and SIGINT, while training, only note the request (the list yielded);
    the loop finishes its step, checkpoints and stops. Handlers restored on exit.

    A signal ignored when the run starts stays ignored (the Unix convention): a
    non-interactive shell starts background jobs (``cmd &``, CI runners, nohup
    scripts) with SIGINT ignored, and such a run must not be stopped by it."""
    caught: list[int] = []
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue
            handlers[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)


class Preempted(Exception):
    """SIGTERM or SIGINT: the run stopped after a step, with a checkpoint at it."""

    def __init__(self, signum: int, step: int):
        super().__init__(signum, step)
        self.signum, self.step = signum, step


def _checkpoint_on_damage(loader, save, out: str):
    """The loader's batches; a damaged sample with --on-damaged stop writes a
    checkpoint at the last finished step first, so the run can go on with skip."""
    try:
        yield from loader
    except DamagedSample as e:
        save()
        raise DamagedSample(f"{e}. A checkpoint was written at the last finished step; to "
                            f"train on without the sample: python -m trainer.run --out {shlex.quote(out)} "
                            "--resume --on-damaged skip") from None


def train(cfg: Config) -> dict:
    """Run (or resume) the configured pretraining; returns a summary dict."""
    env = dist.init("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    try:
        return _train(cfg, env)
    finally:
        dist.shutdown()


def _train(cfg: Config, env: dist.Env) -> dict:
    check_environment(cfg)
    run_dir = Path(cfg.out)
    if cfg.batch_size % env.world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by {env.world} ranks")
    # Checked on every rank (a shared file system), so no rank is left waiting for one
    # that stopped; nothing is created before these pass.
    run_folder.check(run_dir, cfg.resume, cfg.overwrite, held=not env.main)
    data_id = {"data": datasets.identity(cfg.data)}
    if cfg.test_data:
        data_id["test_data"] = datasets.identity(cfg.test_data)
    if cfg.resume:
        _same_dataset(run_dir, cfg.data, data_id["data"])
    classes = datasets.check_labels(cfg.data)
    sysm = systems.choose(cfg, env)
    # The loader resolves backend, device, stage and recipe, once (pipelines/build.py);
    # built before the folder is claimed, so a dataset no backend here can read is
    # refused with nothing created.
    start = _Start(sysm, _build_loader(cfg, env, sysm), classes, data_id)
    lock = run_folder.claim(run_dir, cfg.resume, cfg.overwrite) if env.main else None
    try:
        return _train_in(cfg, env, run_dir, start)
    finally:
        if lock is not None:
            lock.release(unlink=True)


def _same_dataset(run_dir: Path, data: str, now: dict) -> None:
    """--resume: the dataset must be the one the run started on, by content."""
    try:
        saved = json.loads((run_dir / "config.json").read_text()).get("datasets", {})["data"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        print(f"note: {run_dir / 'config.json'} records no dataset identity (a run from an "
              "earlier version): the dataset cannot be checked against the one it started on",
              file=sys.stderr)
        return
    changed = datasets.differences(saved, now)
    if changed:
        raise ValueError(f"--resume: the dataset in {data} is not the one this run started on "
                         f"({'; '.join(changed)}); resuming would train on other samples with "
                         "another schedule. Point --data at the original dataset (it may have "
                         "moved), or start a new run")


@dataclass(frozen=True)
class _Start:
    """What is settled before the run folder is claimed."""
    sysm: systems.Systems
    loader: object             # pipelines' loader; loader.resolved: what it chose
    classes: int
    data_id: dict


def _build_loader(cfg: Config, env: dist.Env, sysm: systems.Systems):
    """This rank's loader: its share of each batch, on the chosen device."""
    n_rotated, rotated_size = rotated_views(cfg)
    return build_loader(LoaderConfig(
        data=cfg.data, backend=cfg.backend, preset=resolve_preset(cfg), size=cfg.size,
        rotated_views=n_rotated, rotated_size=rotated_size,
        small_size=cfg.small_size or None, batch_size=cfg.batch_size // env.world,
        jitter=cfg.jitter, recipe=cfg.recipe,  # a typed tuple or None (trainer/options.py)
        seed=cfg.seed, rank=env.rank, world=env.world, workers=cfg.workers,
        device=str(sysm.device), on_damaged=cfg.on_damaged, triton_check=cfg.triton_check),
        dtype=sysm.dtype)


def _resume(run_dir: Path, objective, optimizer, scaler) -> int | None:
    """--resume: weights, buffers and optimiser state from the checkpoint; its step,
    or None where none was written yet (the run starts from step 0)."""
    ck = checkpoint.load(run_dir)
    if ck is None:
        return None
    objective.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if scaler is not None and ck["scaler"] is not None:
        scaler.load_state_dict(ck["scaler"])
    return ck["step"]


def _run_files(cfg: Config, run_dir: Path, resolved: dict, data_id: dict, recipe,
               resumed_at: int | None) -> tuple[Metrics, Watch]:
    """The main rank's files: config.json, recipe.json, metrics.jsonl (a resumed run
    keeps its lines up to ``resumed_at``) and the watchers (TensorBoard, W&B)."""
    write_config(run_dir, cfg, resolved, data_id)
    checkpoint.write_text_atomic(run_dir / "recipe.json",  # every view, as trained
                                 json.dumps(to_spec(recipe), indent=1) + "\n")
    watch = Watch(run_dir, cfg.tensorboard, cfg.wandb, resumed_at,
                  {"config": to_dict(cfg), "resolved": resolved})
    atexit.register(watch.close)  # event files flushed however the run ends
    return Metrics(run_dir, resumed_at, watch), watch


def _set_up(cfg: Config, env: dist.Env, run_dir: Path, start: _Start) -> tuple[Run, int]:
    """Objective, optimiser, the checkpoint (--resume) and the run folder's files;
    the Run and the step to start from."""
    sysm, loader, chose = start.sysm, start.loader, start.loader.resolved
    objective = build_objective(cfg, chose.recipe, start.classes)
    model, objective = systems.prepare(objective, cfg, sysm, env)
    spe = len(loader)
    total = cfg.epochs * spe
    lr = cfg.lr * cfg.batch_size / 256
    optimizer = optim.build(objective.param_groups(), cfg.optimizer, lr, cfg.momentum,
                            cfg.weight_decay)
    resumed_at = _resume(run_dir, objective, optimizer, sysm.scaler) if cfg.resume else None
    resolved = {"backend": chose.backend, "preset": resolve_preset(cfg),
                "device": str(chose.device), "stage": chose.stage,
                "dtype": str(sysm.dtype).removeprefix("torch."), "world": env.world,
                "steps_per_epoch": spe, "total_steps": total, "lr": lr,
                "num_classes": start.classes}
    metrics, watch = None, None
    if env.main:
        metrics, watch = _run_files(cfg, run_dir, resolved, start.data_id, chose.recipe,
                                    resumed_at)
    run = Run(cfg=cfg, env=env, run_dir=run_dir, loader=loader, model=model,
              objective=objective, optimizer=optimizer, sysm=sysm, spe=spe, total=total,
              warmup=round(cfg.warmup_epochs * spe),
              stop=min(total, cfg.max_steps) if cfg.max_steps else total,
              ckpt_every=cfg.ckpt_every or spe, resolved=resolved, metrics=metrics,
              watch=watch, **_monitors(cfg, env, objective))
    return run, resumed_at or 0


def _monitors(cfg: Config, env: dist.Env, objective) -> dict:
    """RankMe's hook on the method (--rankme); with --test-data, the online kNN
    (--knn-bank, --knn-test; 0 turns it off): its images chosen and their decoding
    started, on every rank (each decodes its share)."""
    out = {"rankme": RankMe(objective.method) if cfg.rankme else None, "knn": None}
    if cfg.test_data and cfg.knn_bank and cfg.knn_test:
        knn = OnlineKnn(cfg.data, cfg.test_data, cfg.size, cfg.knn_bank, cfg.knn_test,
                        cfg.seed, env.rank, env.world)
        if knn.why_not is None:
            out["knn"] = knn
        elif env.main:
            print(f"note: no online kNN on {cfg.test_data}: {knn.why_not}", file=sys.stderr)
    return out


def _train_in(cfg: Config, env: dist.Env, run_dir: Path, start: _Start) -> dict:
    run, step = _set_up(cfg, env, run_dir, start)
    with _stop_on_signals() as stop_signal:
        loop = Loop(step=step, step_last=step,
                    bar=progress_bar(run.stop, step, cfg.progress and env.main))
        _train_loop(run, loop, stop_signal)
        loop.bar.close()  # the last step was logged (step == stop): nothing left in the tally
        save(run, loop.step)
    summary = {"run": str(run_dir), "step": loop.step, "final": loop.last,
               "skipped_steps": loop.skipped_total, **run.resolved}
    if env.main:
        run.watch.close()
        if cfg.test_data:
            summary["eval"] = _evaluate(cfg, run_dir, run.sysm.device, loop.step)
    return summary


def _train_loop(run: Run, loop: Loop, stop_signal: list[int]) -> None:
    """Steps until run.stop, a checkpoint every --ckpt-every steps. A signal stops
    the loop after the step it is in, with a checkpoint at it (Preempted)."""
    cfg = run.cfg
    run.model.train()
    while loop.step < run.stop:
        epoch, skip = divmod(loop.step, run.spe)
        run.loader.set_epoch(epoch, skip)
        # the lambda reads `loop.step` when a damaged sample stops the run: the last
        # finished step, on purpose
        for batch in _checkpoint_on_damage(run.loader, lambda: save(run, loop.step), cfg.out):
            if run.watch is not None and loop.step % run.spe == 0 and cfg.view_grid_every \
                    and epoch % cfg.view_grid_every == 0:
                run.watch.views(batch, loop.step)  # once every few epochs: a host copy is fine
            lr = optim.set_lr(run.optimizer, loop.step, run.total, run.warmup)
            loop.tally.add(train_step(run.model, run.objective, run.optimizer, run.sysm, batch,
                                      loop.step, (loop.step + 1) / run.total,
                                      check_finite=cfg.check_finite))
            loop.step += 1
            # One process acts on a signal after the step it is in. Ranks agree on
            # it when they read the tally, at the same logged steps on every rank.
            stopping = run.env.world == 1 and bool(stop_signal)
            if loop.step % cfg.log_every == 0 or loop.step == run.stop:
                stopping = log_line(run, loop, lr, bool(stop_signal)) or stopping
            if loop.step % run.spe == 0 or loop.step == run.stop:
                epoch_end(run, loop)  # the online kNN, on every rank at the same step
            loop.bar.update(1)
            if loop.step % run.ckpt_every == 0 and loop.step < run.stop:
                save(run, loop.step)
            if stopping and loop.step < run.stop:
                loop.bar.close()
                save(run, loop.step)
                raise Preempted(stop_signal[0] if stop_signal else signal.SIGTERM, loop.step)
            if loop.step >= run.stop:
                break


class EvaluationFailed(RuntimeError):
    """Training finished and its files are written; the evaluation after it failed."""


def _evaluate(cfg: Config, run_dir: Path, device, step: int) -> dict:
    """The quick tasks on --test-data (tools/evaluate.py runs every one). A failure
    here must not read as a failed training: the message says the run is complete."""
    from trainer.evaluate import EvalConfig, evaluate_run
    ecfg = EvalConfig(tasks=("linear", "knn", "color"), progress=cfg.progress, seed=cfg.seed)
    try:
        return evaluate_run(run_dir, cfg.data, cfg.test_data, device, ecfg)
    except (ValueError, RuntimeError, OSError, LookupError) as e:
        raise EvaluationFailed(
            f"training finished (step {step}; backbone.pt and checkpoint.pt written), but the "
            f"evaluation on {cfg.test_data} failed: {cli.one_line(str(e), 300)}; evaluate later "
            f"with: python -m tools.evaluate {shlex.quote(str(run_dir))} --train "
            f"{shlex.quote(cfg.data)} --test {shlex.quote(cfg.test_data)}") from None


def main(argv=None) -> int:
    """The command line (pipelines/cli.py: one line on failure, --debug for the
    traceback); 2 for a bad option, 128+signal when preempted."""
    return cli.run(_main, "trainer.run", argv)


def _main(argv) -> int:
    try:
        cfg = from_argv(argv)
    except ValueError as e:
        print(f"trainer.run: error: {e}", file=sys.stderr)
        return 2
    try:
        summary = train(cfg)
    except Preempted as p:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"stopped by {signal.Signals(p.signum).name} after step {p.step}; checkpoint "
                  "written; continue with: python -m trainer.run --out "
                  f"{shlex.quote(cfg.out)} --resume", file=sys.stderr)
        return 128 + int(p.signum)
    except RuntimeError as e:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.peer_failure(e):
            # the rank that died is named by torchrun's summary ("Root Cause")
            print(f"trainer.run: error: rank {os.environ.get('RANK')}: another rank stopped "
                  f"mid-step ({str(e).splitlines()[0][:200]}); the run folder keeps its last "
                  f"checkpoint: once every rank can run, start the same torchrun command "
                  f"with --out {shlex.quote(cfg.out)} --resume", file=sys.stderr)
            return 1
        raise
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: summary[k] for k in ("run", "step", "final")}, indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
