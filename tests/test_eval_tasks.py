"""The colour and augmentation-parameter probes on real pixels, and the
evaluation tool end to end (tools/evaluate.py)."""

import colorsys
import json

import evalref
import numpy as np
import pytest
import torch
from conftest import converted, run_tool
from PIL import Image

from pipelines.build import LoaderConfig
from pipelines.params import NAMES
from trainer.probes.augparams import augparams_probe, view_features
from trainer.probes.color import BINS, histograms, rgb_to_hsv
from trainer.probes.ridge import ridge_r2


def test_hsv_matches_colorsys_and_histograms_bin_solid_colours():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(500, 3, generator=g)
    rgb[:5] = torch.tensor([[0.5, 0.5, 0.5], [1, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0.3, 0.3]])
    want = torch.tensor([colorsys.rgb_to_hsv(*p) for p in rgb.tolist()])
    torch.testing.assert_close(rgb_to_hsv(rgb), want, atol=1e-5, rtol=0)
    # solid images: all mass in one bin, the one the formula says
    colours = [(255, 0, 0), (0, 0, 255), (128, 128, 128), (255, 200, 0)]
    imgs = torch.tensor(colours, dtype=torch.uint8).view(4, 1, 1, 3).expand(4, 6, 5, 3)
    h = histograms(imgs)
    assert torch.allclose(h.sum(1), torch.ones(4))
    for row, c in zip(h, colours):
        hh, ss, vv = colorsys.rgb_to_hsv(*(x / 255 for x in c))
        k = (min(int(hh * BINS[0]), 7) * BINS[1] + min(int(ss * BINS[1]), 2)) * BINS[2] \
            + min(int(vv * BINS[2]), 2)
        assert row[k] == 1.0, (c, row.nonzero())


def test_colour_probe_reads_histograms_from_features_that_hold_them():
    from tools.make_synthetic import render

    imgs = torch.from_numpy(np.stack([render(0, "train", i, (32, 32))[0] for i in range(600)]))
    hist = histograms(imgs)
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(hist.shape[1], 64, generator=g)
    holds = torch.cat([hist @ mix, torch.randn(600, 64, generator=g)], 1)  # + noise dims
    random = torch.randn(600, 128, generator=g)
    good = ridge_r2(holds[:400], hist[:400], holds[400:], hist[400:])
    bad = ridge_r2(random[:400], hist[:400], random[400:], hist[400:])
    assert good["r2"] > 0.95, good
    assert abs(bad["r2"]) < 0.1, bad


class MeanPixel(torch.nn.Module):
    """A 'backbone' whose features are the view's mean pixel per channel."""

    def forward(self, x):
        return x.float().mean((2, 3))


@pytest.fixture(scope="module")
def gray_dataset(tmp_path_factory):
    """64 flat grey images (value 100) of assorted sizes: under the augself recipe a
    view's mean pixel is brightness x 100 / 255, normalised; nothing else moves it."""
    from tools import convert_dataset

    root = tmp_path_factory.mktemp("gray")
    for i in range(64):
        d = root / "img" / "train" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + i % 7, 36 + i % 5), (100, 100, 100)).save(d / f"{i}.png")
    rc = convert_dataset.main([str(root / "img"), "--split", "train", "--out", str(root / "c"),
                               "--write-mode", "raw", "--quiet", "--no-beton"])
    assert rc == 0
    return root / "c"


def test_augparams_probe_recovers_the_brightness_written_into_the_pixels(gray_dataset):
    """Views rendered by the loader, their emitted parameters as targets: the
    brightness each view was given is read back from its pixels (a view paired
    with another view's parameters would score near 0)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def views(seed):
        lc = LoaderConfig(data=str(gray_dataset), backend="auto", preset="augself", size=16,
                          batch_size=32, seed=seed, shuffle=False, drop_last=False,
                          device=device)
        return view_features(MeanPixel(), lc, device, progress=False)

    train, test = views(0), views(1)
    assert len(train[0]) == 128 and train[1].shape == (128, len(NAMES))
    out = augparams_probe(train, test)
    assert out["r2"]["brightness"] > 0.98, out
    assert out["r2"]["crop_h"] < 0.3 and out["r2"]["hue"] < 0.3, out
    assert out["r2"]["solarize"] is None  # off in the augself recipe


def test_augparams_probe_on_features_that_contain_a_parameter():
    g = torch.Generator().manual_seed(2)
    p = torch.rand(600, len(NAMES), generator=g)
    p[:, NAMES.index("solarize")] = 0.0
    feats = torch.cat([p[:, [NAMES.index("hue")]] * 3 - 1, torch.randn(600, 20, generator=g)], 1)
    out = augparams_probe((feats[:400], p[:400]), (feats[400:], p[400:]))
    assert out["r2"]["hue"] > 0.99 and out["r2"]["blur"] < 0.1, out
    assert out["r2"]["solarize"] is None


def _run_folder(tmp_path, size=32):
    from trainer.config import from_argv
    from trainer.models import build_backbone
    from trainer.runlog import write_config

    cfg = from_argv(["--data", "-", "--out", str(tmp_path / "run"), "--backbone", "small",
                     "--size", str(size)])
    (tmp_path / "run").mkdir()
    write_config(tmp_path / "run", cfg, {"preset": "augself"})
    torch.manual_seed(0)
    net, _ = build_backbone("small")
    torch.save(net.state_dict(), tmp_path / "run" / "backbone.pt")
    return tmp_path / "run"


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """120 synthetic 40x40 images of the test split (other images than tiny_dataset's
    train split, the same 60 classes), converted apart: a split to score on."""
    return converted(tmp_path_factory.mktemp("heldout"), (40, 40), 0, 120, "test", seed=7,
                     extra=("--no-beton",))


def test_evaluate_tool_every_task_and_its_errors(tmp_path, tiny_dataset, heldout, capsys):
    """Each task's figure against a naive reference (tests/evalref.py) computed here
    from the features the evaluator cached: fitted on tiny_dataset, scored on a
    held-out split (train = test would make every image its own neighbour). kNN,
    few-shot, colour and augparams are re-derived; linear is held to chance only (its
    strength sweep by L-BFGS is a fit of its own to redo; test_probes.py pins it)."""
    run = _run_folder(tmp_path)
    k, ways, shot, queries, episodes = 5, 3, 1, 2, 20
    r = run_tool("tools.evaluate", run, "--train", tiny_dataset, "--test", heldout,
                 "--ways", ways, "--shots", shot, "--queries", queries, "--episodes", episodes,
                 "--knn-k", k, "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    files = list((run / "eval").glob("*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())["results"]
    assert set(doc) == {"linear", "knn", "fewshot", "color", "augparams"}
    assert set(doc["linear"]) == {"class", "colour", "shape"}
    assert files[0].with_suffix(".md").read_text().count("|") > 10
    cache = evalref.cached_splits(run)  # one cache per split
    assert set(cache) == {str(tiny_dataset.resolve()), str(heldout.resolve())}
    tr, te = cache[str(tiny_dataset.resolve())], cache[str(heldout.resolve())]
    # colour is linearly readable from random conv features, on held-out images too:
    # measured 0.68 on 12 hue bins (chance 1/12)
    assert doc["linear"]["colour"]["top1"] > 0.4
    # kNN: brute force, the same k and temperature; a test image whose ranking or vote
    # is a float32 near tie may go either way (measured: 1 of 120 per labeling, and the
    # evaluator's figures equal the reference's)
    for labeling in ("class", "colour", "shape"):
        want, close = evalref.knn_top1(tr, te, labeling, k, 0.07)
        assert close <= 0.05, (labeling, close)
        assert abs(doc["knn"][labeling]["top1"] - want) <= close + 1e-9, (labeling, want)
    # few-shot: the same episodes (trainer/probes/fewshot.py draws them from a CPU
    # generator seeded with --seed, 0), checked to be episodes, each scored with an
    # independent float64 fit of the documented head. Queries whose two best logits
    # are within 1e-3 may go either way between that and the evaluator's float32
    # L-BFGS: in a 1-query trial one query went the other way, at margins 6e-5 and
    # 1e-4, the rest >= 2e-3; here 3 of 120 queries are within 1e-3 (from 1.4e-4), and
    # the evaluator's mean equals the reference's (0.583; chance 1/3).
    from trainer.probes.fewshot import _class_table, _sample

    y = torch.as_tensor(te["labels"])
    table, counts, _ = _class_table(y, shot + queries)
    episode = _sample(table, counts, episodes, ways, shot + queries,
                      torch.Generator().manual_seed(0)).numpy()
    x, labels = evalref.unit(te["feats"]), te["labels"]
    hits, close = [], 0
    for idx in episode:  # (ways, shot + queries) sample indices
        assert len(set(labels[idx[:, 0]])) == ways and (labels[idx] == labels[idx[:, :1]]).all()
        assert len(set(idx.flatten())) == idx.size  # support and queries disjoint
        logits = evalref.logistic_predict(x[idx[:, :shot].flatten()],
                                          np.repeat(np.arange(ways), shot),
                                          x[idx[:, shot:].flatten()], ways,
                                          l2=1 / (2 * ways * shot))
        top2 = np.sort(logits, 1)[:, -2:]
        close += int((top2[:, 1] - top2[:, 0] < 1e-3).sum())
        hits.append((logits.argmax(1) == np.repeat(np.arange(ways), queries)).mean())
    got = doc["fewshot"][f"{ways}way{shot}shot"]
    assert got["episodes"] == episodes
    assert abs(got["mean"] - np.mean(hits)) <= close / (episodes * ways * queries) + 1e-9, \
        (got, np.mean(hits), close)
    assert got["ci95"] == pytest.approx(1.96 * np.std(hits) / np.sqrt(episodes),
                                        abs=2 * close / (episodes * ways * queries) + 1e-9)
    # colour: closed-form ridge from the features to the cached histograms, at the
    # strength the evaluator chose on its validation split (one of its grid)
    l2 = doc["color"]["l2"]
    assert any(l2 == pytest.approx(10.0 ** e) for e in range(-6, 4))
    want, per = evalref.ridge_r2(tr["feats"], tr["hist"], te["feats"], te["hist"], l2)
    assert doc["color"]["r2"] == pytest.approx(want, abs=1e-5)
    assert doc["color"]["r2_per_target"] == [None if w is None else pytest.approx(w, abs=1e-5)
                                             for w in per]
    # augparams: the views re-rendered here by the loader as the evaluator does (the
    # same code: views are not cached), each parameter regressed by the naive ridge
    _check_augparams(doc["augparams"], run, tiny_dataset, heldout)
    # in-process from here (each subprocess costs a torch + DALI import): a second
    # evaluation of the same split reads the cache (no new file) and agrees
    from tools.evaluate import main

    assert main([str(run), "--train", str(tiny_dataset), "--test", str(heldout),
                 "--task", "color", "--device", "cpu", "--no-progress"]) == 0
    again = json.loads(files[0].read_text())["results"]["color"]["r2"]
    assert again == pytest.approx(doc["color"]["r2"], abs=1e-6)
    assert len(list((run / "eval" / "features").glob("*.pt"))) == 2
    # bad input: one line with the tool's prefix, naming the thing; nothing written
    from pipelines import cli

    capsys.readouterr()
    assert cli.run(main, "evaluate", [str(run), "--train", str(tmp_path), "--test",
                                      str(tiny_dataset)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("evaluate: error: --train") and len(err.splitlines()) == 1, err
    assert "manifest.json" in err and str(tmp_path) in err
    with pytest.raises(SystemExit):
        main([str(run), "--train", str(tiny_dataset), "--test", str(tiny_dataset),
              "--task", "linear,colour"])
    assert "colour" in capsys.readouterr().err
    assert cli.run(main, "evaluate", [str(tmp_path), "--train", str(tiny_dataset), "--test",
                                      str(tiny_dataset)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("evaluate: error:") and "config.json" in err, err


def _check_augparams(result: dict, run, train, test):
    """The evaluator's augparams figures against a naive ridge per parameter, at the
    strength it chose, on the views rendered as trainer/evaluate.py's _augparams
    renders them (the run's preset and size, seed 0, file order, both views)."""
    from pipelines.build import LoaderConfig
    from pipelines.params import NAMES
    from trainer.evaluate import load_backbone
    from trainer.probes.augparams import view_features

    net, cfg, resolved = load_backbone(run, "cpu")

    def views(data):
        return view_features(net, LoaderConfig(
            data=str(data), backend="auto", preset=resolved["preset"], size=cfg.size,
            batch_size=256, seed=0, shuffle=False, drop_last=False, device="cpu"),
            "cpu", progress=False)

    (fa, pa), (fb, pb) = views(train), views(test)
    assert len(fa) == 2 * 256 and len(fb) == 2 * 120  # two views of every image
    scored = []
    for j, name in enumerate(NAMES):
        if pa[:, j].std() == 0 or pb[:, j].std() == 0:  # never varies under the recipe
            assert result["r2"][name] is None, name
            continue
        assert result["r2"][name] is not None, name  # it varies: it has a figure
        want, _ = evalref.ridge_r2(fa, pa[:, j], fb, pb[:, j], result["l2"][name])
        assert result["r2"][name] == pytest.approx(want, abs=1e-5), name
        scored.append(want)
    # measured: brightness 0.53 and gray 0.33 read from random features; crop, hue ~0
    assert result["r2"]["brightness"] > 0.3
    assert result["mean_r2"] == pytest.approx(np.mean(scored), abs=1e-5)
