"""The GPU device stage (Finisher, stage "triton": one Triton launch per view):
its views equal the reference ops, a loader using it emits the parameters of
the numba stage and views within dali-cpu's bounds, and a batch of two views
costs at most 40 dispatched torch ops.

Without a GPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, on
CPU tensors), which must be set before Triton is imported: those cases run
tests/fused_probe.py in a subprocess. Where CUDA exists they run compiled instead,
in-process, on the GPU. Bounds, as for photometric_cpu's kernel: at most 1
level off on the uint8 view and on at most KERNEL_MAX_SHARE of values (float32
roundoff moves a value within ~1e-6 of a rounding boundary; the raw view rounds
half up where torch rounds half to even), and the float view within 0.01 of a
level of the reference before rounding (measured in the interpreter, seeds 0-5:
at most 3.7e-4 of a level).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import HAVE_DALI, ROOT

pytest.importorskip("triton")

# Dispatched torch ops (each at least one kernel launch or allocation on a GPU) for
# a batch of two views. On the CPU the two host-to-device copies are absent; on a
# GPU they add 2 x (pin_memory, to): the GPU run of the same test counts them.
MAX_OPS = 40

# Share of the kernel probe's 98,304 uint8 values (32 views x 32 x 32 x 3) that may
# be 1 level off the reference ops. Measured 2026-11-30 in the interpreter (AMD
# EPYC, triton 3.8.0) on the probe's inputs with noise_and_ramps and sample_rest
# seeds 0-5: 2, 0, 5, 0, 0, 3 values, at most 5 (5.1e-5; seed 0, the one tested, is
# 2). Bound: 5x the largest, 2.5e-4 (24 values). The compiled GPU run is not
# measured here (no GPU); its roundoff (approximate exp and division, ~2 ulp) is of
# the same order, so the same bound holds it: a GPU run above it should measure and
# state its own. A kernel 1 level off on 1 value in 200 (491 values) fails. The
# loader's self-check tolerates more (pipelines/triton_check.py MAX_SHARE, 5e-3):
# it runs in production, on any GPU, and only has to catch a broken kernel.
KERNEL_MAX_SHARE = 2.5e-4


def _interpreted(what: str, *args) -> dict:
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "fused_probe.py"), what, *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, "TRITON_INTERPRET": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _runs(what: str, *args):
    """The compiled run on the GPU where CUDA exists, else the interpreted one on
    the CPU (the proxy: CPU CI runs it). Not both: Triton 3.6's interpreter (torch
    2.11's) turns a loop bound into an int with int() of a 1-element array, which
    numpy 2.5 refuses ("only 0-dimensional arrays can be converted"), so on the
    H200 machine's image the interpreted run cannot start; 3.8 squeezes first."""
    if torch.cuda.is_available():
        import fused_probe

        fn = getattr(fused_probe, what)
        yield fn(*args, device="cuda") if args else fn(device="cuda")
    else:
        yield _interpreted(what, *args)


def test_triton_stage_equals_reference_ops():
    for m in _runs("kernel"):
        assert all(v >= 5 for v in m["fired"].values()), m["fired"]  # every op under test
        assert m["max_levels"] <= 1 and m["share_off"] <= KERNEL_MAX_SHARE, m
        assert m["max_float_levels"] < 0.01, m


def test_triton_stage_is_a_few_ops_per_batch():
    for m in _runs("ops"):
        assert m["launches"] == 2, m  # one per view
        assert m["ops"] <= MAX_OPS, m["op_names"]


@pytest.mark.skipif(not HAVE_DALI, reason="needs nvidia-dali")
def test_loader_with_triton_stage_matches_reference_and_numba_params(small_dataset):
    """dali-cpu through the Triton stage: the numba stage's parameters bit for bit,
    views within dali-cpu's PSNR bounds (test_pipeline_agreement: min 42, median
    50 dB) of the reference re-render, channels_last. Rendered by the Triton stage
    itself: a first batch that raised, or failed the self-check, is the torch
    stage's (pipelines/batch.py Finisher), which meets the same bounds, so the
    stage left after the batch and the self-check's outcome are asserted too."""
    for m in _runs("loader", str(small_dataset)):
        assert m["stage"] == "triton", m
        assert str(m["self_check"]).startswith("passed: view 0:"), m
        assert m["params_equal"] and m["channels_last"], m
        assert m["psnr_min"] >= 42 and m["psnr_median"] >= 50, m


def test_a_triton_stage_that_fails_falls_back_to_torch_loudly(capsys):
    """A first batch the Triton stage cannot run (here: CPU tensors outside the
    interpreter, which compiled Triton refuses) is finished by the torch stage
    instead, with a warning, and later batches go there directly."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter runs CPU tensors: nothing fails")
    import numpy as np
    from fused_probe import rows

    from pipelines.batch import Finisher
    from pipelines.recipe import preset

    recipe = preset("augself", 16)
    g = np.random.default_rng(0)
    crops = [torch.from_numpy(g.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
             for _ in range(2)]
    crop = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (4, 2, 1))
    labels, index = np.zeros(4, np.int64), np.arange(4, dtype=np.int64)
    fused = Finisher(recipe, torch.device("cpu"), stage="triton")
    plain = Finisher(recipe, torch.device("cpu"), stage="torch")
    for epoch in (0, 1):
        a = fused([c.clone() for c in crops], rows(recipe, crop, index, epoch), labels, index)
        b = plain([c.clone() for c in crops], rows(recipe, crop, index, epoch), labels, index)
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))
        assert all(torch.equal(a.params[k], b.params[k]) for k in b.params)
    assert fused.stage == "torch" and fused.self_check_result.startswith("failed: raised")
    assert capsys.readouterr().err.count("falling back to the batched torch stage") == 1


def test_triton_stage_checks_its_first_batch_against_the_torch_stage():
    """Self-check on first use (pipelines/triton_check.py): a healthy kernel passes
    and keeps rendering; a fault injected after the kernel (one value 3 levels off;
    1 level on 1% of values; 3 levels on one kept uint8 value) fails the check with
    one line on stderr naming the view, the loader switches to the torch stage and
    the first batch handed over is the torch stage's; one value 1 level off is
    roundoff's worst and passes; with the check off the faulty batch goes through."""
    for m in _runs("self_check"):
        both = [[0, 0], [0, 1], [1, 0], [1, 1]]  # (batch, view) rendered by the kernel
        for name in ("healthy", "nudge_one") + (("healthy_bf16",) if "healthy_bf16" in m
                                                 else ()):
            c = m[name]
            assert c["result"].startswith("passed: view 0:"), (name, c)
            assert c["stage"] == "triton" and c["rendered"] == both and c["stderr"] == [], c
            assert c["levels_off_torch"] <= 1, (name, c)
        assert "raw view 1:" in m["healthy"]["result"], m["healthy"]  # raw compared too
        for name, view in (("shift_one", "view 1:"), ("nudge_many", "view 0:"),
                           ("shift_raw", "raw view 0:")):
            c = m[name]
            assert c["result"].startswith(f"failed: {view}"), (name, c)
            assert len(c["stderr"]) == 1 and "disagrees with the torch stage" in \
                c["stderr"][0] and view in c["stderr"][0], (name, c)
            assert c["stage"] == "torch" and c["rendered"] == both[:2], (name, c)
            assert c["equals_torch"] and c["levels_off_torch"] == 0, (name, c)
        assert "largest 3 levels" in m["shift_one"]["result"], m["shift_one"]
        assert "largest 1 level " in m["nudge_many"]["result"], m["nudge_many"]  # the share
        c = m["off"]
        assert c["result"] == "off" and c["stage"] == "triton" and c["stderr"] == [], c
        assert c["rendered"] == both and c["levels_off_torch"] == 3, c  # unchecked
