"""The run's monitors (issue 24.2): RankMe at every logged line
(trainer/monitors.py) and the online kNN at each epoch end (trainer/online_knn.py).

RankMe is pinned on features of known rank; the online kNN against
tools.evaluate's kNN on the same features (the same backbone, every image of both
splits: the monitor's figure is the evaluation's, exactly), and the kNN's pass is
shown to leave every weight, buffer and train/eval flag as it found them. A 4-step
run with --test-data logs both keys, and its last kNN line equals the evaluation
that follows the run. Neither monitor reads the device from the host between
logged lines (tests/test_sync_count.py's counter)."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import stepkit
import torch
import trainrun
from conftest import converted
from test_sync_count import _Reads

from trainer.evaluate import EvalConfig, evaluate
from trainer.models import build_backbone
from trainer.monitors import RankMe, rankme
from trainer.online_knn import OnlineKnn, evaluating, in_order, pick
from trainer.step import Tally, train_step


def _orthonormal(n: int, r: int, g) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    return q


@pytest.mark.parametrize("r", [1, 2, 5, 16, 40, 64])
def test_rankme_of_equal_singular_values_is_their_number(r):
    """U V^T with U (N, r), V (D, r) orthonormal: r singular values of 1 and D - r of
    0, so p_k = 1/r + eps or eps and RankMe = r, raised by the eps terms to the value
    of the formula (under 2e-4 relative above r): to 1e-5 relative from float64
    features, 1e-4 from float32 ones (the zero singular values come out at ~1e-8
    and ~1e-7 of the largest, next to eps)."""
    g = torch.Generator().manual_seed(r)
    x = _orthonormal(200, r, g) @ _orthonormal(64, r, g).T
    eps = 1e-7
    want = math.exp(-(r * (1 / r + eps) * math.log(1 / r + eps)
                      + (64 - r) * eps * math.log(eps)))
    assert r <= want < r * (1 + 2e-4)
    assert rankme(x).item() == pytest.approx(want, rel=1e-5)
    assert rankme(x.float()).item() == pytest.approx(want, rel=1e-4)


def test_rankme_is_at_most_the_rank_of_a_product_and_grows_with_it():
    """A (N, r) @ B (r, D), Gaussian: rank r, unequal singular values, so RankMe is
    in (1, r]; it grows with r; full-rank Gaussian features sit near min(N, D)."""
    g = torch.Generator().manual_seed(0)
    got = []
    for r in (1, 2, 4, 8, 16, 32, 64):
        x = torch.randn(256, r, generator=g) @ torch.randn(r, 64, generator=g)
        got.append(rankme(x).item())
        assert 1 <= got[-1] <= r * (1 + 3e-4), (r, got[-1])  # eps: under 2e-4 above
    assert got == sorted(got) and got[0] == pytest.approx(1, abs=3e-4), got
    assert got[-1] > 0.75 * 64, got


def test_a_collapsed_batch_has_rankme_one_and_half_precision_is_read_in_float64():
    """Rows on one line: 1. bf16 features under autocast: solved in float64, the
    value of the same features given as float32."""
    g = torch.Generator().manual_seed(1)
    row = torch.randn(1, 128, generator=g)
    collapsed = row.repeat(64, 1) * torch.rand(64, 1, generator=g)  # every row on one line
    assert rankme(collapsed).item() == pytest.approx(1, abs=3e-4)
    x = torch.randn(64, 128, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = rankme(x)
    assert got.dtype == torch.float64
    assert got.item() == rankme(x.float()).item()


def test_a_diverging_batch_gives_nan_not_an_error():
    """NaN or inf features, or squares past float64 (a diverged run): NaN, which the
    metrics line writes as null; the eigensolver would raise on them."""
    x = torch.randn(16, 8)
    x[3, 2] = float("nan")
    assert torch.isnan(rankme(x))
    x[3, 2] = float("inf")
    assert torch.isnan(rankme(x))
    assert torch.isnan(rankme(torch.full((4, 4), 1e200, dtype=torch.float64)))


def test_rankme_reads_the_features_the_step_trained_on():
    """The hook keeps the first view's backbone features of the step (train mode):
    the value equals RankMe of the backbone run on that view by a copy of the model
    taken before the step; one value per line, none when no step ran."""
    objective, opt, sysm, recipe = stepkit.build("simsiam", "augself")
    monitor = RankMe(objective.method)
    batch = stepkit.batch(recipe, 0, b=16)
    before = copy.deepcopy(objective)
    train_step(objective, objective, opt, sysm, batch, 0, 0.5, check_finite=True)
    line = monitor.line()
    with torch.no_grad():
        want = rankme(before.method.backbone(batch.views[0]))
    assert set(line) == {"rankme"}
    assert line["rankme"].item() == pytest.approx(want.item(), rel=1e-5)
    assert monitor.line() == {}
    monitor.remove()


def test_the_hook_traces_into_one_compiled_graph():
    """--compile: Dynamo traces the hook with the objective, no graph break, and the
    features it keeps are the step's (a graph output, replayed onto the monitor)."""
    import torch._dynamo
    objective, _, _, recipe = stepkit.build("simsiam", "augself")
    monitor = RankMe(objective.method)
    batch = stepkit.batch(recipe, 0, b=16)
    before = copy.deepcopy(objective)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(objective)(batch)
    assert explained.graph_break_count == 0, explained.break_reasons
    with torch.no_grad():
        want = rankme(before.method.backbone(batch.views[0]))
    assert monitor.line()["rankme"].item() == pytest.approx(want.item(), rel=1e-5)


def test_rankme_adds_no_host_read_to_a_step_and_none_to_the_line():
    """Steps with the hook: no read (as tests/test_sync_count.py holds for the bare
    step). A line: the tally's one copy, RankMe's value in it, whatever the SVD's
    own convergence check does (on CUDA it waits for the device, as the copy does)."""
    objective, opt, sysm, recipe = stepkit.build("simsiam", "augself")
    monitor = RankMe(objective.method)
    train_step(objective, objective, opt, sysm, stepkit.batch(recipe, 0), 0, 0.5,
               check_finite=True)
    tally = Tally()
    with _Reads() as steps:
        for step in (1, 2):
            tally.add(train_step(objective, objective, opt, sysm, stepkit.batch(recipe, step),
                                 step, 0.5, check_finite=True))
    assert not steps.ops, dict(steps.ops)
    extra = monitor.line()
    plain = copy.deepcopy(tally)
    with _Reads() as with_extra:
        got = tally.read(False, extra)
    with _Reads() as without:
        plain.read(False)
    assert with_extra.ops == without.ops and with_extra.ops["Tensor.tolist"] == 1
    assert got.extra == {"rankme": pytest.approx(extra["rankme"].item())}
    assert "rankme" not in got.means


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """120 synthetic 40x40 test-split images of tiny_dataset's 60 classes."""
    return converted(tmp_path_factory.mktemp("heldout"), (40, 40), 0, 120, "test", seed=7,
                     extra=("--no-beton",))


def _backbone():
    torch.manual_seed(0)
    net, _ = build_backbone("small", "cifar")
    return net.to(memory_format=torch.channels_last).train()


def test_online_knn_equals_evaluate_knn_on_the_same_features(tiny_dataset, heldout):
    """Every image of both splits (caps above their sizes): the same features as
    tools.evaluate extracts (the same preprocessing and batches), scored by its
    kNN: the same figure, exactly."""
    net = _backbone()
    knn = OnlineKnn(str(tiny_dataset), str(heldout), 32, bank=4096, test=4096, seed=0)
    assert knn.why_not is None and [len(y) for y in knn.labels] == [256, 120]
    got = knn(net, "cpu")
    want = evaluate(net, str(tiny_dataset), str(heldout), 32, "cpu",
                    EvalConfig(tasks=("knn",), progress=False))["knn"]["class"]["top1"]
    assert got == want
    assert 0 < got < 1


def test_online_knn_leaves_weights_buffers_and_modes_as_they_were(tiny_dataset, heldout):
    """BatchNorm in eval mode inside (its running statistics read, none updated),
    every module's own flag back after: a module the run keeps in eval stays so."""
    net = _backbone()
    list(net.modules())[3].eval()
    flags = [m.training for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    knn = OnlineKnn(str(tiny_dataset), str(heldout), 32, bank=64, test=32, seed=3)
    knn(net, "cpu")
    assert [m.training for m in net.modules()] == flags
    after = net.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    with evaluating(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == flags


def test_the_bank_and_test_set_are_capped_and_drawn_once_from_the_seed(tiny_dataset, heldout):
    a = OnlineKnn(str(tiny_dataset), str(heldout), 32, bank=64, test=32, seed=3)
    b = OnlineKnn(str(tiny_dataset), str(heldout), 32, bank=64, test=32, seed=3)
    assert [len(y) for y in a.labels] == [64, 32]
    assert all(np.array_equal(x.idx, y.idx) for x, y in zip(a.parts, b.parts))
    idx = pick(np.arange(10, 500), 50, seed=1, which=0)
    assert len(set(idx)) == 50 and list(idx) == sorted(idx) and idx.min() >= 10
    assert np.array_equal(pick(np.arange(7), 50, 1, 0), np.arange(7))


@pytest.mark.parametrize("n,world", [(10, 3), (9, 3), (2, 4), (7, 1)])
def test_the_ranks_shares_gathered_come_back_in_the_sets_order(n, world):
    """Rank r embeds rows r, r + world, ... (padded to one length); dist.gather
    concatenates them in rank order; in_order puts row i back at i."""
    idx = np.arange(100, 100 + n)
    shares = [OnlineKnn._share(idx, r, world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1
    gathered = torch.cat([torch.from_numpy(s).double()[:, None] for s in shares])
    assert in_order(gathered, world)[:n, 0].long().tolist() == idx.tolist()


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_4_step_run_with_test_data_logs_rankme_and_knn(tiny_dataset, heldout, tmp_path):
    """Every logged line has RankMe (in [1, min(batch, features)]); the run's last
    step has a kNN line, and that figure is the evaluation's after the run (the
    same backbone, every image of both splits)."""
    from trainer import run
    out = tmp_path / "run"
    assert run.main(trainrun.args(tiny_dataset, out, "--max-steps", "4", "--epochs", "1",
                                  "--test-data", heldout, "--no-tensorboard")) == 0
    lines = _lines(out)
    losses = [x for x in lines if "loss" in x]
    assert [x["step"] for x in losses] == [1, 2, 3, 4]
    assert all(1 <= x["rankme"] <= 32 for x in losses), losses
    knn = [x for x in lines if "knn" in x]
    assert [(x["step"], x["epoch"]) for x in knn] == [(4, 0.5)], knn
    assert set(knn[0]) == {"step", "epoch", "knn", "knn_s"}
    saved = json.loads(next((out / "eval").glob("*.json")).read_text())
    assert knn[0]["knn"] == saved["results"]["knn"]["class"]["top1"]


def test_knn_lines_fall_at_epoch_ends_and_the_monitors_turn_off(tiny_dataset, heldout,
                                                                  tmp_path):
    """256 images at batch 64: 4 steps an epoch; 6 steps give kNN lines at 4 (the
    epoch's end) and 6 (the run's last step). --knn-bank 0 and --no-rankme: neither."""
    from trainer import run
    out = tmp_path / "run"
    common = ["--max-steps", "6", "--epochs", "2", "--batch-size", "64", "--test-data",
              heldout, "--no-tensorboard", "--log-every", "2"]
    assert run.main(trainrun.args(tiny_dataset, out, *common, "--knn-bank", "32",
                                  "--knn-test", "16")) == 0
    assert [x["step"] for x in _lines(out) if "knn" in x] == [4, 6]
    assert [x["step"] for x in _lines(out) if "rankme" in x] == [2, 4, 6]
    off = tmp_path / "off"
    assert run.main(trainrun.args(tiny_dataset, off, *common, "--knn-bank", "0",
                                  "--no-rankme")) == 0
    assert not any("knn" in x or "rankme" in x for x in _lines(off))


def test_two_ranks_share_the_knn_and_meet_at_its_gather(tiny_dataset, heldout, tmp_path):
    """torchrun, 2 ranks on CPU: each embeds every other image of both sets and the
    gather puts them back in order, so the last kNN line is the evaluation's after
    the run (rank 0, every image, one process); RankMe is the ranks' mean. Nobody
    waits forever: the run ends."""
    import os
    import subprocess
    out = tmp_path / "two"
    r = subprocess.run(trainrun.torchrun(2, *trainrun.args(
        tiny_dataset, out, "--max-steps", "4", "--epochs", "1", "--device", "cpu",
        "--test-data", heldout, "--no-tensorboard", "--log-every", "2")),
        capture_output=True, text=True, cwd=trainrun.ROOT, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    lines = _lines(out)
    assert [x["step"] for x in lines if "rankme" in x] == [2, 4]
    knn = [x for x in lines if "knn" in x]
    assert [x["step"] for x in knn] == [4]
    saved = json.loads(next((out / "eval").glob("*.json")).read_text())
    assert knn[0]["knn"] == saved["results"]["knn"]["class"]["top1"]
