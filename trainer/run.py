"""The main job: pretrain a backbone with an SSL method (+ AugSelf / EquiMod).

    python -m trainer.run --data DIR --method simsiam --aux augself --out runs/x
    torchrun --nproc_per_node=2 -m trainer.run --data DIR ...   (DDP, one rank per device)
    python -m trainer.run --out runs/x --resume                  (continue after a kill)

The run folder gets config.json (resolved, with the git sha), metrics.jsonl,
checkpoint.pt (atomic, every --ckpt-every steps and at the end), backbone.pt
(the backbone as a plain state_dict) and, with --test-data, eval/<dataset>.json
(linear, kNN and colour probes; tools/evaluate.py for every task).

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
import time
from pathlib import Path

import torch

from pipelines import cli
from pipelines.build import LoaderConfig, build_loader, resolve_backend
from pipelines.checks import DamagedSample
from pipelines.recipe import parse_jitter, to_spec
from trainer import checkpoint, datasets, dist, optim, run_folder, systems
from trainer.build import build_objective, rotated_views
from trainer.config import Config, check_environment, from_argv, resolve_preset, to_dict
from trainer.models import backbone_state_dict
from trainer.runlog import Metrics, progress_bar, write_config
from trainer.step import Tally, train_step  # noqa: F401 - train_step: also for tools, benchmarks
from trainer.watch import Watch


def _state(objective, optimizer, scaler, step: int) -> dict:
    return {"step": step, "model": objective.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None}


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


class NonFinite(RuntimeError):
    pass


def _kept(run_dir: Path) -> str:
    """What a run stopped by non-finite values leaves, truthfully."""
    path = run_dir / checkpoint.NAME
    if path.is_file():
        try:
            at = torch.load(path, map_location="cpu", weights_only=True)["step"]
        except Exception:  # noqa: BLE001 - only the message depends on it
            at = "?"
        return (f"the last good checkpoint (step {at}) is kept. Check the data and --resume, "
                "or start over with a lower --lr (--overwrite reuses this folder)")
    return ("no checkpoint had been written yet, so there is nothing to keep. Start over with a "
            "lower --lr (add --overwrite to reuse this folder), or check the data")


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
    backend = resolve_backend(cfg.backend, cfg.data,
                              None if cfg.device == "auto" else cfg.device)
    lock = run_folder.claim(run_dir, cfg.resume, cfg.overwrite) if env.main else None
    try:
        return _train_in(cfg, env, run_dir, backend, classes, data_id)
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


def _train_in(cfg: Config, env: dist.Env, run_dir: Path, backend: str, classes: int,
              data_id: dict) -> dict:
    sysm = systems.choose(cfg, env)
    preset = resolve_preset(cfg)
    n_rotated, rotated_size = rotated_views(cfg)
    loader = build_loader(LoaderConfig(
        data=cfg.data, backend=backend, preset=preset, size=cfg.size,
        rotated_views=n_rotated, rotated_size=rotated_size,
        small_size=cfg.small_size or None, batch_size=cfg.batch_size // env.world,
        jitter=parse_jitter(cfg.jitter) if cfg.jitter else None, recipe=cfg.recipe,
        seed=cfg.seed, rank=env.rank, world=env.world, workers=cfg.workers,
        device=str(sysm.device), on_damaged=cfg.on_damaged, triton_check=cfg.triton_check),
        dtype=sysm.dtype)
    objective = build_objective(cfg, loader.recipe, classes)
    model, objective = systems.prepare(objective, cfg, sysm, env)
    spe = len(loader)
    total = cfg.epochs * spe
    lr = cfg.lr * cfg.batch_size / 256
    optimizer = optim.build(objective.param_groups(), cfg.optimizer, lr, cfg.momentum,
                            cfg.weight_decay)
    warmup = round(cfg.warmup_epochs * spe)

    step = 0
    ck = checkpoint.load(run_dir) if cfg.resume else None
    if ck is not None:
        objective.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if sysm.scaler is not None and ck["scaler"] is not None:
            sysm.scaler.load_state_dict(ck["scaler"])
        step = ck["step"]
    resolved = {"backend": backend, "preset": preset, "device": str(sysm.device),
                "dtype": str(sysm.dtype).removeprefix("torch."), "world": env.world,
                "steps_per_epoch": spe, "total_steps": total, "lr": lr,
                "num_classes": classes}
    metrics, watch = None, None
    if env.main:
        write_config(run_dir, cfg, resolved, data_id)
        checkpoint.write_text_atomic(run_dir / "recipe.json",  # every view, as trained
                                     json.dumps(to_spec(loader.recipe), indent=1) + "\n")
        watch = Watch(run_dir, cfg.tensorboard, cfg.wandb, step if ck is not None else None,
                      {"config": to_dict(cfg), "resolved": resolved})
        atexit.register(watch.close)  # event files flushed however the run ends
        metrics = Metrics(run_dir, step if ck is not None else None, watch)
    stop = min(total, cfg.max_steps) if cfg.max_steps else total
    ckpt_every = cfg.ckpt_every or spe

    def save(at: int) -> None:
        if env.main:
            state = _state(objective, optimizer, sysm.scaler, at)
            if not checkpoint.all_finite(state["model"]):
                raise NonFinite(f"step {at}: the model holds non-finite values (weights or "
                                "BN statistics); " + _kept(run_dir))
            checkpoint.save_atomic(state, run_dir / checkpoint.NAME)
            # the backbone of every checkpoint next to it: backbone.pt always is the
            # checkpoint's, whatever stops the run (trainer/checkpoint.py)
            checkpoint.save_backbone(run_dir, backbone_state_dict(objective.method.backbone),
                                     at, finished=at >= total)

    skipped_total = 0
    with _stop_on_signals() as stop_signal:
        bar = progress_bar(stop, step, cfg.progress and env.main)
        # Sums and counters on the device, read once per logged line (trainer/step.py):
        # no device-to-host read in between, so the host queues steps ahead.
        tally = Tally()
        t_last, step_last = time.perf_counter(), step
        last: dict[str, float] = {}
        model.train()
        while step < stop:
            epoch, skip = divmod(step, spe)
            loader.set_epoch(epoch, skip)
            # the lambda reads `step` when a damaged sample stops the run: the last
            # finished step, on purpose
            for batch in _checkpoint_on_damage(loader, lambda: save(step), cfg.out):  # noqa: B023
                if watch is not None and step % spe == 0 and cfg.view_grid_every \
                        and epoch % cfg.view_grid_every == 0:
                    watch.views(batch, step)  # once every few epochs: a host copy is fine
                cur_lr = optim.set_lr(optimizer, step, total, warmup)
                tally.add(train_step(model, objective, optimizer, sysm, batch, step,
                                     (step + 1) / total, check_finite=cfg.check_finite))
                step += 1
                # One process acts on a signal after the step it is in. Ranks agree on
                # it when they read the tally, at the same logged steps on every rank.
                stopping = env.world == 1 and bool(stop_signal)
                if step % cfg.log_every == 0 or step == stop:
                    now = time.perf_counter()
                    rate = (step - step_last) * cfg.batch_size / max(now - t_last, 1e-9)
                    got = tally.read(bool(stop_signal))
                    stopping = stopping or got.stop
                    skipped_total += got.skipped
                    if got.skipped:
                        what = ("step skipped" if got.skipped == 1 else
                                f"{got.skipped} steps skipped since step {step_last}")
                        print(f"step {step}: non-finite loss, {what} ({got.row} in a row)",
                              file=sys.stderr)
                    if got.row >= cfg.max_bad_steps:
                        if env.main:
                            metrics.write({"step": step, "epoch": step / spe, "lr": cur_lr,
                                           "skipped_steps": skipped_total,
                                           "stopped": "non-finite loss"})
                        raise NonFinite(f"stopped at step {step}: {got.row} steps in a row "
                                        "had a non-finite loss (--max-bad-steps "
                                        f"{cfg.max_bad_steps}); " + _kept(run_dir))
                    last = got.means
                    if env.main:
                        metrics.write({"step": step, "epoch": step / spe, "lr": cur_lr,
                                       "images_per_s": rate, "skipped_steps": skipped_total,
                                       "damaged_samples": loader.damage.count,
                                       **last})
                        if last:
                            bar.set_postfix(loss=f"{last['loss']:.4f}", img_s=f"{rate:.0f}")
                    t_last, step_last = now, step
                bar.update(1)
                if step % ckpt_every == 0 and step < stop:
                    save(step)
                if stopping and step < stop:
                    bar.close()
                    save(step)
                    raise Preempted(stop_signal[0] if stop_signal else signal.SIGTERM, step)
                if step >= stop:
                    break
        bar.close()  # the last step was logged (step == stop): nothing left in the tally
        save(step)
    summary = {"run": str(run_dir), "step": step, "final": last,
               "skipped_steps": skipped_total, **resolved}
    if env.main:
        watch.close()
        if cfg.test_data:
            summary["eval"] = _evaluate(cfg, run_dir, sysm.device, step)
    return summary


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
