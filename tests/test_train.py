"""The trainer on CPU: every method x auxiliary objective trains, a killed and
resumed run ends with an uninterrupted run's weights, the backbone exports into
torchvision's ResNet-18, and the config is strict."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch
import torchvision
import trainrun
from conftest import HAVE_DALI

from trainer import run as trainer_run
from trainer.config import Config, from_argv, from_dict, parser
from trainer.methods import METHODS


@pytest.mark.parametrize("aux", ["none", "augself", "equimod", "essl", "condproj"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_twenty_steps_finite_and_decreasing(tiny_dataset, tmp_path, method, aux):
    """Criterion: every one of the 20 per-step losses is finite, and the mean of
    the last 5 is below the mean of the first 5 (on fresh batches each step).
    MoCo's window starts once its queue (32 keys, one batch) holds only real
    keys, at step 2: step 1's negatives are the random initial queue, a
    different (easier) objective. E-SSL runs at half the others' rate:
    its head (LayerNorm over 2048 units, as theirs) overshoots at lr 0.4 x 32/256
    without the 10 warm-up epochs E-SSL trains with (its rotation loss rose from
    1.4 to 8-10 within 5 steps here, the head alone as much as with the backbone).
    Barlow Twins' loss swings 15-95 from batch to batch here (32 samples estimate
    each of its 64x64 correlations), so a window of 5 judges the batches, not the
    training: it is compared step by step, over the last 10, with a control run on
    the same batches at a rate of 1e-6 (measured: ~32 trained vs ~45 control).
    The views come from dali-cpu where DALI is installed: the method and head are
    under test here, not the loader (every backend emits the same parameters, tests
    of pipelines/), and its batched numba stage renders SwAV's eight views 3x
    faster than the per-image reference ops of the torchvision backend.
    The logged terms are checked too (``_check_terms``): the method's and the
    auxiliary head's, which must add up to the total, and the head must train."""
    out = tmp_path / "run"
    rate = ["--lr", "0.2"] if aux == "essl" else []
    rc = trainer_run.main(_twenty(tiny_dataset, out, method, aux, *rate))
    if (method, aux) == ("supervised", "condproj"):  # no projector to condition: refused
        assert rc == 2 and not out.exists()
        return
    assert rc == 0
    loss = trainrun.losses(out)
    assert len(loss) == 20
    assert all(torch.isfinite(torch.tensor(loss)))
    _check_terms(out, aux)
    if method == "barlow":
        ctl = tmp_path / "control"
        assert trainer_run.main(_twenty(tiny_dataset, ctl, method, aux, "--lr", "1e-6")) == 0
        trained, control = sum(loss[-10:]) / 10, sum(trainrun.losses(ctl)[-10:]) / 10
        assert trained < control, f"{method}+{aux}: last 10 {trained:.4f}, control {control:.4f}"
        return
    start = 1 if method == "moco" else 0
    first, last = sum(loss[start:start + 5]) / 5, sum(loss[-5:]) / 5
    assert last < first, f"{method}+{aux}: first 5 {first:.4f}, last 5 {last:.4f}"


# The logged auxiliary term of each --aux (trainer/augself.py, equimod.py, essl.py;
# condproj logs none: it conditions the method's projector, whose loss is "ssl"), the
# config field of its weight in the total (AugSelf logs its rows' weighted sum), and
# the most its last 5 steps' mean may be of its first 5 steps' (None: not checked).
# Measured over the 8 methods, last 5 / first 5: AugSelf 0.70-0.78 trained, 1.005-1.11
# with its head cut from the gradient (loss detached); EquiMod 0.73-0.87 and
# 1.013-1.06. E-SSL's term does not fall in 20 steps (0.85-1.007 trained, 0.997-1.022
# cut): without E-SSL's warm-up its head first overshoots (the docstring above: from
# 1.42-1.49 at step 1 up to 1.6-2.9, back to 1.41-1.57; rotation accuracy stays at
# chance, 0.25), so only its head's turn says it trains.
TERM = {"augself": ("augself", None, 0.9), "equimod": ("equimod", "equimod_weight", 0.94),
        "essl": ("essl", "essl_weight", None)}
# The parameters each auxiliary objective trains (state-dict prefixes), and how far
# their weight matrices must turn (sin of the angle, ``_head_turn``). Measured: every
# trained head turned 9.3e-3 (E-SSL) to 0.98 (condproj's encoder), one cut from the
# gradient 3.3e-7 to 4.8e-7 (float32 rounding of the decay-only updates).
HEAD = {"augself": "aux.", "equimod": "aux.", "essl": "aux.",
        "condproj": "method.projector.encoder."}
MIN_TURN = 1e-4


def _check_terms(out, aux):
    """Every step logs ``ssl`` (the method's loss) and the auxiliary term, finite and
    positive (each is a cross-entropy or a mean square: 0 only when zeroed), and the
    total is ``ssl + weight x term`` (a term left out of the total, or weighted
    otherwise, fails here). The auxiliary head trains: its weight matrices turn, and
    AugSelf's and EquiMod's terms fall (TERM, HEAD)."""
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((out / "config.json").read_text())["config"]
    ssl = torch.tensor([r["ssl"] for r in rows], dtype=torch.float64)
    total = torch.tensor([r["loss"] for r in rows], dtype=torch.float64)
    assert torch.isfinite(ssl).all()
    if aux not in TERM:
        assert torch.equal(total, ssl)  # nothing else is added (--no-probe)
    else:
        key, weight, most = TERM[aux]
        term = torch.tensor([r[key] for r in rows], dtype=torch.float64)
        assert torch.isfinite(term).all() and (term > 0).all(), term
        w = cfg[weight] if weight else 1.0
        # float32 sums, logged as floats: equal to float32 rounding (Barlow's reach 95)
        torch.testing.assert_close(total, ssl + w * term, rtol=1e-5, atol=1e-5)
        if aux == "augself":  # the weighted sum of its rows' terms
            rows_sum = sum(cfg[f"augself_{f}"] * torch.tensor([r[f"augself/{f}"] for r in rows],
                                                             dtype=torch.float64)
                           for f in ("crop", "color"))
            torch.testing.assert_close(term, rows_sum, rtol=1e-5, atol=1e-6)
        first, last = term[:5].mean(), term[-5:].mean()
        if most is not None:
            assert last < most * first, f"{aux}: first 5 {first:.4f}, last 5 {last:.4f}"
    if aux != "none":
        turn = _head_turn(out, HEAD[aux])
        assert turn > MIN_TURN, f"{aux}: its head turned by {turn:.2e} (sin of the angle)"


def _head_turn(out, prefix) -> float:
    """How far the head's weight matrices turned from their initial direction: sin of
    the angle between all of them, trained and as built (the run's seed rebuilds
    them). A parameter without gradient is only shrunk by weight decay (SGD's
    momentum buffer stays parallel to it), so its direction stays to float32
    rounding (~1e-7)."""
    from pipelines.build import LoaderConfig, resolve_recipe
    from trainer.build import build_objective, rotated_views

    saved = json.loads((out / "config.json").read_text())
    cfg, resolved = from_dict(saved["config"]), saved["resolved"]
    n, side = rotated_views(cfg)
    recipe = resolve_recipe(LoaderConfig(data=cfg.data, preset=resolved["preset"], size=cfg.size,
                                         small_size=cfg.small_size or None, rotated_views=n,
                                         rotated_size=side))
    built = build_objective(cfg, recipe, resolved["num_classes"]).state_dict()
    trained = trainrun.weights(out)
    keys = [k for k, v in built.items() if k.startswith(prefix) and v.dim() >= 2]
    assert keys, prefix
    a = torch.cat([built[k].flatten() for k in keys]).double()
    b = torch.cat([trained[k].flatten() for k in keys]).double()
    cos = (a @ b / (a.norm() * b.norm())).clamp(-1, 1)
    return float((1 - cos * cos).sqrt())


def _twenty(data, out, method, aux, *extra) -> list[str]:
    args = trainrun.args(data, out, "--method", method, "--aux", aux, "--epochs", "4",
                         "--max-steps", "20", *extra)
    args[args.index("--backend") + 1] = "dali-cpu" if HAVE_DALI else "torchvision"
    return args


def test_killed_and_resumed_equals_uninterrupted(tiny_dataset, tmp_path):
    """Bit for bit: CPU semantics, said explicitly (cuDNN's backward kernels need
    not be deterministic, so on a GPU equality would test cuDNN, not resume)."""
    base = trainrun.args(tiny_dataset, tmp_path / "x", "--method", "moco", "--aux", "augself",
                         "--epochs", "5", "--ckpt-every", "4", "--device", "cpu")
    whole = tmp_path / "whole"
    r = subprocess.run(trainrun.cmd(*base, "--out", whole), capture_output=True, text=True,
                       cwd=trainrun.ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    cut = tmp_path / "cut"
    p = subprocess.Popen(trainrun.cmd(*base, "--out", cut), cwd=trainrun.ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (cut / "checkpoint.pt").exists() and time.time() - t0 < 300:
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = torch.load(cut / "checkpoint.pt", weights_only=False)["step"]
    total = len(trainrun.losses(whole))
    assert 0 < killed_at < total, "the kill must land mid-run"
    r = subprocess.run(trainrun.cmd("--out", cut, "--resume", "--no-progress"),
                       capture_output=True, text=True, cwd=trainrun.ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = trainrun.weights(whole), trainrun.weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert trainrun.losses(cut) == trainrun.losses(whole)


def test_export_loads_into_torchvision_resnet18(tiny_dataset, tmp_path):
    out = tmp_path / "r18"
    rc = trainer_run.main(["--data", str(tiny_dataset), "--out", str(out), "--backbone",
                           "resnet18", "--stem", "imagenet", "--size", "64", "--batch-size", "16",
                           "--epochs", "1", "--max-steps", "2", "--backend", "torchvision",
                           "--workers", "0", "--no-progress", "--proj-hidden", "64",
                           "--proj-dim", "64", "--lr", "0.5"])
    assert rc == 0
    sd = torch.load(out / "backbone.pt", weights_only=True)
    net = torchvision.models.resnet18()
    fc = net.fc
    net.fc = torch.nn.Identity()                 # fc aside: the export has none
    net.load_state_dict(sd, strict=True)
    # ...and it is the trained backbone, not a fresh one
    trained = {k.removeprefix("method.backbone."): v
               for k, v in trainrun.weights(out).items() if k.startswith("method.backbone.")}
    fresh = torchvision.models.resnet18(zero_init_residual=True).state_dict()
    assert all(torch.equal(sd[k], trained[k]) for k in sd)
    assert not torch.equal(sd["conv1.weight"], fresh["conv1.weight"])
    assert fc.in_features == 512 and net(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_config_is_strict():
    with pytest.raises(ValueError, match="unknown option.*bogus"):
        from_dict({"data": "x", "bogus": 1})
    with pytest.raises(ValueError, match="epochs must be int"):
        from_dict({"data": "x", "epochs": "3"})
    with pytest.raises(ValueError, match="lr must be float"):
        from_dict({"data": "x", "lr": True})
    with pytest.raises(ValueError, match="method='nope'"):
        from_dict({"data": "x", "method": "nope"})
    assert from_dict({"data": "x", "lr": 1}).lr == 1.0


def test_help_lists_every_option_with_default():
    text = parser().format_help()
    for name, f in Config.__dataclass_fields__.items():
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
        assert f"(default: {f.default!r})" in " ".join(text.split()), name


def test_resume_refuses_a_changed_config(tiny_dataset, tmp_path):
    out = tmp_path / "r"
    assert trainer_run.main(trainrun.args(tiny_dataset, out, "--epochs", "1",
                                          "--max-steps", "2")) == 0
    with pytest.raises(ValueError, match="method differ"):
        from_argv(["--out", str(out), "--resume", "--method", "byol"])
    cfg = from_argv(["--out", str(out), "--resume", "--max-steps", "3"])
    assert cfg.max_steps == 3 and cfg.method == "simsiam"


def test_existing_run_is_not_overwritten(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "r"
    assert trainer_run.main(trainrun.args(tiny_dataset, out, "--epochs", "1",
                                          "--max-steps", "1")) == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert trainer_run.main(trainrun.args(tiny_dataset, out, "--epochs", "1",
                                          "--max-steps", "1")) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_the_online_probe_works_in_the_runs_precision(precision):
    """The online linear probe (on by default) in the run's dtype: its loss is the
    cross-entropy of its logits over the labelled samples, and its accuracy counts
    them. It once cast features to float32 whatever the run, so every
    --precision fp64 run with the probe failed at its first step."""
    from trainer.objective import LinearProbe

    dtype = {"fp32": torch.float32, "fp64": torch.float64}[precision]
    torch.manual_seed(0)
    probe = LinearProbe(6, 3).to(dtype)
    feats = torch.randn(5, 6, dtype=dtype)
    labels = torch.tensor([0, 2, -1, 1, 2])  # -1: unlabelled, left out
    out = probe(feats, labels)
    logits = feats @ probe.fc.weight.t() + probe.fc.bias
    keep = labels >= 0
    want = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(out["loss"], want)
    assert out["probe/acc"].item() == pytest.approx(
        (logits[keep].argmax(1) == labels[keep]).float().mean().item())
