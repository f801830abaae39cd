"""A step with a non-finite loss is not applied, decided on the device
(trainer/step.py): every parameter, BN statistic, momentum encoder, MoCo queue
and optimiser state stays bit for bit; a run through such steps reaches the
weights of a run that never saw them; the loop counts them from its device tally
and stops after --max-bad-steps at the first logged line at or after the limit.

Before the device-side skip, the flag was read on the host after the forward
pass and the step returned early: the optimiser and the hooks were left alone,
but the forward pass had already moved every BN running statistic (to NaN on a
NaN batch) and MoCo had enqueued its NaN keys, which poisoned the next K / B
steps' loss: the bit-for-bit checks below failed there on BN buffers and queues.
"""

import json

import pytest
import stepkit
import torch
import trainrun

from trainer import run as trainer_run
from trainer.step import Tally, train_step


def _state(objective, opt) -> dict[str, torch.Tensor]:
    """Every tensor a step may change: the objective's state dict (weights, BN
    statistics, target networks, MoCo's queue and pointer) and the optimiser's."""
    out = {f"model.{k}": v.detach().clone() for k, v in objective.state_dict().items()}
    names = {p: n for n, p in objective.named_parameters()}
    for p, st in opt.state.items():
        for k, v in st.items():
            if torch.is_tensor(v):
                out[f"opt.{names[p]}.{k}"] = v.clone()
    return out


def _same(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert not changed, f"{where}: {changed[:8]}"


def _run(method, aux, plan, optimizer="sgd"):
    """Steps of ``plan`` ((step index, batch seed or None for a NaN batch), ...);
    -> the state after each, and the steps' ``skipped`` flags."""
    objective, opt, sysm, recipe = stepkit.build(method, aux, optimizer=optimizer)
    states, skipped = [], []
    for step, seed in plan:
        batch = stepkit.batch(recipe, 0 if seed is None else seed, poison=seed is None)
        out = train_step(objective, objective, opt, sysm, batch, step, (step + 1) / 10,
                         check_finite=True)
        skipped.append(out["skipped"].item())
        states.append(_state(objective, opt))
    return states, skipped


def _check_skips_leave_no_trace(method, aux, optimizer="sgd"):
    # A: two good steps. B: a NaN step first (the optimiser has no state yet), the
    # same good step, a NaN step, the same second good step.
    a, a_skipped = _run(method, aux, [(0, 1), (1, 2)], optimizer)
    b, b_skipped = _run(method, aux, [(0, None), (0, 1), (1, None), (1, 2)], optimizer)
    assert a_skipped == [0, 0] and b_skipped == [1, 0, 1, 0]
    moved = [k for k in a[0] if k in a[1] and not torch.equal(a[0][k], a[1][k])]
    assert any(".running_mean" in k for k in moved)  # the good steps did change things
    _same(b[1], a[0], "after a NaN first step and a good one")
    _same(b[2], b[1], "across a NaN step")
    _same(b[3], a[1], "after the second good step")


@pytest.mark.parametrize("method,aux", stepkit.PAIRS)
def test_a_nan_step_changes_nothing_and_leaves_no_trace(method, aux):
    _check_skips_leave_no_trace(method, aux)


@pytest.mark.parametrize("method,aux", [("byol", "augself"), ("simclr", "none"),
                                        ("moco", "condproj")])
def test_lars_skips_on_the_device_too(method, aux):
    _check_skips_leave_no_trace(method, aux, "lars")


def test_the_tally_counts_skips_and_averages_only_applied_steps():
    """What the loop reads at a logged line: skipped steps since the last line, the
    current run of them (across lines), means over the applied steps only."""
    t = Tally()
    nan = float("nan")
    for loss, bad in [(1.0, 0), (nan, 1), (3.0, 0), (nan, 1), (nan, 1)]:
        t.add({"loss": torch.tensor(loss), "skipped": torch.tensor(float(bad))})
    got = t.read(False)
    assert (got.means, got.skipped, got.row, got.stop) == ({"loss": 2.0}, 3, 2, False)
    t.add({"loss": torch.tensor(nan), "skipped": torch.tensor(1.0)})
    got = t.read(True)
    assert (got.means, got.skipped, got.row, got.stop) == ({}, 1, 3, True)
    t.add({"loss": torch.tensor(5.0), "skipped": torch.tensor(0.0)})
    got = t.read(False)
    assert (got.means, got.skipped, got.row) == ({"loss": 5.0}, 0, 0)
    t.add({"loss": torch.tensor(7.0)})  # --no-check-finite: no flag
    assert t.read(False).means == {"loss": 7.0}


def test_the_stop_after_max_bad_steps_waits_for_a_logged_line(tiny_dataset, tmp_path, capsys):
    """trainrun's DIVERGES run (test_reliability.py) turns its weights non-finite
    after step 2; logging every 4 steps with --max-bad-steps 3, the run counts its
    skipped steps on the device and stops at the first logged line whose run of
    non-finite steps reaches 3: a multiple of 4, with every skipped step counted."""
    from test_reliability import DIVERGES

    run = tmp_path / "run"
    rc = trainer_run.main(trainrun.args(tiny_dataset, run, "--epochs", "5", "--device", "cpu",
                                        "--max-bad-steps", "3", *DIVERGES)
                          + ["--log-every", "4"])
    err = capsys.readouterr().err
    assert rc == 1, err[-2000:]
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1]
    assert last["stopped"] == "non-finite loss" and last["step"] % 4 == 0
    row = int(err.split(f"stopped at step {last['step']}: ")[1].split(" steps in a row")[0])
    assert 3 <= row < 3 + 4 and last["skipped_steps"] == row, err[-2000:]
    assert [ln["step"] for ln in lines] == list(range(4, last["step"] + 1, 4))
    assert f"step {last['step']}: non-finite loss, " in err


def test_fp16_a_nan_step_changes_nothing_but_the_scale_and_reads_nothing():
    """With a GradScaler the scaler skips the optimiser (the step makes every
    gradient NaN for it) and backs its scale off, as after an overflow; the rest is
    the same device-side skip, still without a host read (fused SGD takes the
    scaler's found_inf on the device)."""
    from test_sync_count import _Reads

    from trainer import systems

    objective, opt, _, recipe = stepkit.build("byol", "augself")
    sysm = systems.Systems(torch.device("cpu"), torch.float16, torch.amp.GradScaler("cpu"))
    train_step(objective, objective, opt, sysm, stepkit.batch(recipe, 1), 0, 0.1,
               check_finite=True)
    before, scale = _state(objective, opt), sysm.scaler.get_scale()
    reads = _Reads()
    with reads:
        out = train_step(objective, objective, opt, sysm, stepkit.batch(recipe, 2, poison=True),
                         1, 0.2, check_finite=True)
    assert not reads.ops and out["skipped"].item() == 1
    _same(_state(objective, opt), before, "fp16, across a NaN step")
    assert sysm.scaler.get_scale() == scale / 2


def test_forward_state_is_found_again_after_to():
    """The step restores what ``forward_state()`` lists; it is cached, and ``.to()``
    gives BN buffers new tensors: the list must name the current ones."""
    from torch.nn.modules.batchnorm import _BatchNorm

    objective, *_ = stepkit.build("swav", "equimod")
    objective.forward_state()
    objective.to(torch.float64)
    now = {id(t) for t in objective.forward_state()}
    bns = [m for m in objective.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(id(m.running_mean) in now and id(m.num_batches_tracked) in now
                       for m in bns)
    assert id(objective.method.prototypes.weight) in now
    assert all(t.dtype == torch.float64 for t in objective.forward_state()
               if t.is_floating_point())
