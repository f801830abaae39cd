"""Frozen-feature probes (trainer/probes/): each recovers a known answer on synthetic
features and fails to find signal where there is none. Runs on CUDA when present."""

import math

import numpy as np
import pytest
import torch

from trainer.probes.fewshot import fewshot_probe
from trainer.probes.knn import knn_predict, knn_probe
from trainer.probes.linear import linear_probe, mean_class_accuracy, stratified_split
from trainer.probes.ridge import ridge_r2

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEV)


# ---------------------------------------------------------------- linear probe

def test_linear_probe_recovers_linear_rule_with_small_l2():
    x = randn(3000, 20, seed=0)
    y = (x @ randn(20, 5, seed=1)).argmax(1)  # 5 classes, a noiseless linear rule
    r = linear_probe(x[:2000], y[:2000], x[2000:], y[2000:].cpu().numpy())
    assert r["top1"] >= 0.97
    assert r["l2"] <= 1e-3  # sharp boundaries: weak regularisation wins
    assert r["val_top1"][str(r["l2"])] == max(r["val_top1"].values())
    assert abs(r["mean_class_acc"] - r["top1"]) < 0.05


def test_linear_probe_sweep_prefers_strong_l2_when_overfitting():
    # 2 classes, 400 dims with signal in 5: the 500-sample fit split is separable by
    # noise alone, so an almost unregularised fit overfits and a large l2 wins.
    n = 1000
    y = torch.arange(n + 1000, device=DEV) % 2
    x = randn(n + 1000, 400, seed=2)
    x[:, :5] += 0.5 * (2 * y[:, None] - 1)
    r = linear_probe(x[:n], y[:n], x[n:], y[n:], val_fraction=0.5)
    assert r["l2"] >= 0.1
    assert r["val_top1"][str(r["l2"])] >= r["val_top1"]["1e-06"] + 0.03
    weak = linear_probe(x[:n], y[:n], x[n:], y[n:], val_fraction=0.5, l2_grid=[1e-6])
    assert r["top1"] >= weak["top1"] + 0.03


def test_mean_class_accuracy_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 3])  # class 3 absent from y: not averaged
    # recalls 3/4, 1/2, 0/1 -> 5/12; plain accuracy would be 4/7
    assert mean_class_accuracy(pred, y) == pytest.approx(5 / 12)


def test_stratified_split_takes_a_share_of_every_class():
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    fit, val = stratified_split(y, 0.2, seed=3)
    assert sorted(torch.cat([fit, val]).tolist()) == list(range(16))
    assert torch.bincount(y[val], minlength=3).tolist() == [2, 1, 0]  # singleton stays in fit
    assert torch.equal(val, stratified_split(y, 0.2, seed=3)[1])  # deterministic


# ------------------------------------------------------------------------- kNN

def test_knn_picks_nearer_cluster():
    train = torch.tensor([[1, 0.1], [1, -0.1], [2, 0.05], [0.1, 1], [-0.1, 1], [0.05, 2]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    test = torch.tensor([[1.0, 0.3], [0.2, 1.0], [3.0, -0.5]])
    pred = knn_predict(train.to(DEV), labels, test.to(DEV), k=3, chunk=2)
    assert pred.tolist() == [0, 1, 0]
    assert knn_probe(train.to(DEV), labels, test.to(DEV), [0, 1, 1], k=3)["top1"] == \
        pytest.approx(2 / 3)


def test_knn_weights_beat_majority():
    # From the test point (1, 0): one class-0 neighbour at cosine 1, two class-1 at 0.5,
    # one class-0 point opposite (cosine -1), outside the k=3 neighbourhood.
    s = math.sin(math.pi / 3)
    train = torch.tensor([[1, 0], [0.5, s], [0.5, -s], [-1, 0]]).to(DEV)
    labels = torch.tensor([0, 1, 1, 0])
    test = torch.tensor([[1.0, 0.0]]).to(DEV)
    # T = 0.07: exp(1/T) outweighs 2 exp(0.5/T); a huge T makes it a plain majority vote.
    assert knn_predict(train, labels, test, k=3, temperature=0.07).tolist() == [0]
    assert knn_predict(train, labels, test, k=3, temperature=1e3).tolist() == [1]
    assert knn_predict(train, labels, test, k=1, temperature=1e3).tolist() == [0]


# -------------------------------------------------------------------- few-shot

def test_fewshot_separated_clusters_are_perfect():
    y = torch.arange(10).repeat_interleave(25)  # 10 classes x 25 samples
    x = torch.nn.functional.one_hot(y, 16).float().to(DEV) * 3 + 0.05 * randn(250, 16, seed=4)
    r = fewshot_probe(x, y, ways=5, shots=(1, 5), queries=15, episodes=300)
    assert set(r) == {"5way1shot", "5way5shot"}
    for v in r.values():
        assert v == {"mean": 1.0, "ci95": 0.0, "episodes": 300}


def test_fewshot_random_labels_are_at_chance():
    x = randn(800, 64, seed=5)
    y = torch.randint(0, 20, (800,), generator=torch.Generator().manual_seed(6))
    r = fewshot_probe(x, y.numpy(), ways=5, shots=(1, 5), queries=10, episodes=500, seed=7)
    for v in r.values():
        assert abs(v["mean"] - 0.2) < 0.03
        assert 0 < v["ci95"] < 0.03
    again = fewshot_probe(x, y, ways=5, shots=(5,), queries=10, episodes=50, seed=7)
    assert again == fewshot_probe(x, y, ways=5, shots=(5,), queries=10, episodes=50, seed=7)


def test_fewshot_too_few_classes():
    y = torch.tensor([0] * 30 + [1] * 30 + [2] * 30 + [3] * 10)
    x = randn(100, 8, seed=8)
    with pytest.raises(ValueError, match=r"5-way 1-shot.*only 3 of the 4 classes"):
        fewshot_probe(x, y, ways=5, shots=(1,), queries=15)


# ------------------------------------------------------------------- labelings

def test_labels_are_matched_by_name_across_splits():
    """Each split numbers its own classes and factor values; the test split's are
    mapped onto the train split's by name. Unknown names and unlabelled samples (-1)
    become -1; an unknown value shared by two classes is counted once, by name."""
    from trainer.probes.labelings import match

    train = ["k=a,s=x", "k=b,s=x", "k=c,s=y"]
    test = ["k=b,s=x", "k=d,s=x", "k=d,s=y"]
    m, skipped = match(train, [0, 1, 2, -1], test, [0, 1, 2, 2, -1])
    assert skipped == {}
    assert m["class"].test.tolist() == [1, -1, -1, -1, -1]  # test's 0 is train's 1
    assert m["class"].unknown == {"k=d,s=x": 1, "k=d,s=y": 2}
    assert m["k"].train.tolist() == [0, 1, 2, -1] and m["k"].test.tolist() == [1, -1, -1, -1, -1]
    assert m["k"].unknown == {"d": 3}
    assert m["s"].test.tolist() == [0, 0, 1, 1, -1] and m["s"].why_not() is None
    m, skipped = match(train, [0, 1], ["cat"], [0])  # no factors in test, no class known
    assert set(m) == {"class"} and set(skipped) == {"k", "s"}
    assert "'cat'" in m["class"].why_not()


# ----------------------------------------------------------------------- ridge

def test_ridge_recovers_linear_targets():
    t = randn(3000, 3, seed=9) * torch.tensor([1.0, 5.0, 0.5], device=DEV)
    mix = t @ randn(3, 3, seed=10)  # the targets, linearly mixed
    x = torch.cat([mix, randn(3000, 30, seed=11)], 1) + 0.01 * randn(3000, 33, seed=12)
    const = torch.full((3000, 1), 2.0, device=DEV)  # zero test variance: no R^2
    r = ridge_r2(x[:2000], torch.cat([t, const], 1)[:2000], x[2000:],
                 torch.cat([t, const], 1)[2000:])
    assert r["r2"] > 0.99
    assert r["r2_per_target"][3] is None
    assert all(v > 0.99 for v in r["r2_per_target"][:3])


def test_ridge_random_features_near_zero():
    x, t = randn(3000, 50, seed=13), randn(3000, 4, seed=14)
    r = ridge_r2(x[:2000], t[:2000], x[2000:], t[2000:])
    assert -0.05 < r["r2"] < 0.05
    assert r["l2"] >= 1.0  # the sweep shrinks towards the mean predictor
