"""The device-side skip of a non-finite step (trainer/step.py) on CUDA in bf16,
where it matters: torch's fused SGD takes ``found_inf`` on the device, LARS and
the forward state (BN statistics, MoCo's queue, SwAV's prototypes) are restored by
``torch.where``, and none of it may read the device from the host. The CPU suite
checks the same logic in fp32 (test_skipped_step.py); this file is skipped where
there is no CUDA device.

Across a skipped step the state must stay bit for bit. Two independent runs on a
GPU are compared with a tolerance instead: cuDNN's weight gradients may sum in a
different order from run to run."""

import pytest
import stepkit
import torch
from test_skipped_step import _state

from trainer.step import train_step

pytestmark = pytest.mark.gpu
DEV = "cuda"


def _steps(objective, opt, sysm, recipe, plan, strict_from: int | None = None):
    """``plan``: (step, batch seed or None for NaN); from step ``strict_from`` on,
    each step runs under torch.cuda.set_sync_debug_mode("error"): a host read
    of the device (or a blocking copy) in the step fails it."""
    states, skipped = [], []
    for i, (step, seed) in enumerate(plan):
        batch = stepkit.batch(recipe, 0 if seed is None else seed, poison=seed is None,
                              device=DEV)
        strict = strict_from is not None and i >= strict_from
        if strict:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            out = train_step(objective, objective, opt, sysm, batch, step, (step + 1) / 10,
                             check_finite=True)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        skipped.append(out["skipped"].item())
        states.append(_state(objective, opt))
    return states, skipped


def _identical(a: dict, b: dict, where: str, keys=None) -> None:
    keys = a.keys() if keys is None else keys
    changed = [k for k in keys if not torch.equal(a[k], b[k])]
    assert not changed, f"{where}: {changed[:8]}"


def _close(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=f"{where}: {k}")
        else:
            assert torch.equal(a[k], b[k]), f"{where}: {k}"


def _check(method, aux, optimizer):
    build = dict(optimizer=optimizer, device=DEV, dtype=torch.bfloat16)
    a_parts = stepkit.build(method, aux, **build)
    start = _state(*a_parts[:2])
    a, a_skipped = _steps(*a_parts, [(0, 1), (1, 2)])
    b_parts = stepkit.build(method, aux, **build)
    torch.testing.assert_close(_state(*b_parts[:2]), start, rtol=0, atol=0)  # same init
    b, b_skipped = _steps(*b_parts, [(0, None), (0, 1), (1, None), (1, 2)], strict_from=2)
    assert a_skipped == [0, 0] and b_skipped == [1, 0, 1, 0]
    # A NaN first step: the model exactly as built, and any momentum buffer zeros
    # (fused SGD makes them with empty_like: optim.zero_momentum fills them).
    _identical(b[0], start, "after a NaN first step", keys=start.keys())
    bufs = [k for k in b[0] if k.startswith("opt.")]
    assert all(not b[0][k].any() for k in bufs), "momentum left non-zero by a skipped step"
    _close(b[1], a[0], "a good step after a NaN first step")
    _identical(b[2], b[1], "across a NaN step (under sync debug mode 'error')")
    _close(b[3], a[1], "the second good step")


@pytest.mark.parametrize("method,aux", stepkit.PAIRS)
def test_a_nan_step_on_cuda_in_bf16_changes_nothing_and_reads_nothing(method, aux):
    _check(method, aux, "sgd")


@pytest.mark.parametrize("method,aux", [("byol", "augself"), ("simclr", "none"),
                                        ("moco", "condproj")])
def test_lars_on_cuda_skips_on_the_device_too(method, aux):
    _check(method, aux, "lars")
