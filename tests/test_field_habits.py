"""What users of other SSL libraries expect: recipes as YAML/JSON files (strict
like the command line), every shipped recipe builds, timm backbones (a ViT
included) train and export into timm, TensorBoard events hold what
metrics.jsonl holds, and embeddings come out equal to the backbone's output."""

import json
from pathlib import Path

import evalref
import numpy as np
import pytest
import torch

from trainer.config import from_argv

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_yaml_and_json_configs_are_equal_and_equally_strict(tmp_path, small_dataset):
    yaml = pytest.importorskip("yaml")
    doc = {"method": "simclr", "aux": "equimod", "lr": 2, "batch_size": 64,
           "jitter": "0.4,0.4,0.2,0.1", "compile": False, "data": str(small_dataset)}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "a.json").write_text(json.dumps(doc))
    a = from_argv(["--config", str(tmp_path / "a.yaml")])
    b = from_argv(["--config", str(tmp_path / "a.json")])
    assert a == b and a.lr == 2.0 and a.aux == "equimod"
    assert from_argv(["--config", str(tmp_path / "a.yaml"), "--lr", "0.5"]).lr == 0.5
    for ext, dump in (("yaml", yaml.safe_dump), ("json", json.dumps)):
        (tmp_path / f"bad.{ext}").write_text(dump({**doc, "lrr": 1}))
        with pytest.raises(ValueError, match=rf"bad\.{ext}: unknown option\(s\) lrr"):
            from_argv(["--config", str(tmp_path / f"bad.{ext}")])
        (tmp_path / f"typed.{ext}").write_text(dump({**doc, "epochs": "ten"}))
        with pytest.raises(ValueError, match=rf"typed\.{ext}: epochs must be int"):
            from_argv(["--config", str(tmp_path / f"typed.{ext}")])
    (tmp_path / "broken.yaml").write_text("method: [simclr\n")
    with pytest.raises(ValueError, match="broken.yaml: cannot read the config"):
        from_argv(["--config", str(tmp_path / "broken.yaml")])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_recipe_builds_its_objective(path, small_dataset):
    from pipelines.recipe import preset
    from trainer.build import build_objective
    from trainer.run import resolve_preset

    cfg = from_argv(["--config", str(path), "--data", str(small_dataset)])
    assert "Source:" in path.read_text() or path.stem == "quick"  # provenance stated
    recipe = preset(resolve_preset(cfg), cfg.size, cfg.small_size or None)
    objective = build_objective(cfg, recipe, num_classes=10)
    assert sum(p.numel() for p in objective.parameters()) > 0
    assert type(objective.method).__name__.lower().startswith(cfg.method[:4])


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "resnet18", "convnext_tiny"])
def test_timm_backbone_trains_and_exports_into_timm(name, small_dataset, tmp_path):
    timm = pytest.importorskip("timm")
    from trainer import run

    out = tmp_path / "run"
    rc = run.main(["--data", str(small_dataset), "--out", str(out), "--backbone",
                   f"timm:{name}", "--size", "32", "--batch-size", "16", "--max-steps", "5",
                   "--epochs", "1", "--method", "simsiam", "--aux", "augself",
                   "--proj-hidden", "64", "--proj-dim", "64", "--pred-hidden", "32",
                   "--backend", "torchvision", "--workers", "0", "--device", "cpu",
                   "--no-progress", "--log-every", "1", "--no-tensorboard"])
    assert rc == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(np.isfinite(r["loss"]) for r in rows)
    state = torch.load(out / "backbone.pt", weights_only=True)
    model = timm.create_model(name, pretrained=False, num_classes=0)
    model.load_state_dict(state, strict=True)


def test_tensorboard_events_and_embeddings(small_dataset, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipelines.records import Records, open_rgb
    from tools import embed
    from trainer import run
    from trainer.evaluate import load_backbone

    out = tmp_path / "run"
    rc = run.main(["--data", str(small_dataset), "--out", str(out), "--backbone", "small",
                   "--size", "32", "--batch-size", "32", "--epochs", "2", "--workers", "0",
                   "--device", "cpu", "--no-progress", "--log-every", "2",
                   "--backend", "torchvision", "--view-grid-every", "1"])
    assert rc == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    for key in ("loss", "lr", "images_per_s"):
        got = [(e.step, e.value) for e in acc.Scalars(key)]
        want = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        assert [s for s, _ in got] == [s for s, _ in want]
        assert np.allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)
    assert len(acc.Images("views")) == 2  # one per epoch

    for ext in ("npy", "csv"):
        # CPU semantics, said: the reference below is computed on the CPU
        assert embed.main([str(out), "--data", str(small_dataset), "--out",
                           str(tmp_path / f"e.{ext}"), "--quiet", "--device", "cpu"]) == 0
    arr = np.load(tmp_path / "e.npy")
    rec = Records(small_dataset)
    assert len(arr) == len(rec) and (arr["index"] == np.arange(len(rec))).all()
    assert (arr["label"] == rec.table()[:, 0]).all()
    csv = np.loadtxt(tmp_path / "e.csv", delimiter=",", skiprows=1)
    assert np.allclose(csv[:, 2:], arr["embedding"], rtol=1e-5, atol=1e-6)
    # the reference: decode, resize the whole image bilinearly, normalise, forward
    net, cfg, _ = load_backbone(out, "cpu")
    net.eval()
    from PIL import Image
    ids = [0, 7, len(rec) - 1]
    x = torch.stack([torch.from_numpy(np.asarray(
        open_rgb(rec[i][0]).resize((cfg.size, cfg.size), Image.BILINEAR)).copy())
        for i in ids]).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = net((x - mean) / std).numpy()
    assert np.allclose(arr["embedding"][ids], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("drop", ["--no-records", "--no-beton"])
def test_dataset_converted_one_way_trains_and_evaluates(drop, tmp_path):
    from conftest import HAVE_FFCV

    from pipelines.build import resolve_backend
    from tools import convert_dataset, make_synthetic
    from trainer import run
    from trainer.evaluate import EvalConfig, evaluate_run

    if drop == "--no-records" and not HAVE_FFCV:
        pytest.skip("a .beton-only dataset needs ffcv to train")
    make_synthetic.generate(tmp_path / "img", (32, 32), 64, 32, seed=3, quiet=True)
    for split in ("train", "test"):
        assert convert_dataset.main([str(tmp_path / "img"), "--split", split, "--out",
                                     str(tmp_path / split), "--quiet", drop]) == 0
    data = str(tmp_path / "train")
    want = "ffcv" if drop == "--no-records" else None
    got = resolve_backend("auto", data)
    assert got == want if want else got != "ffcv"
    if want or HAVE_FFCV:  # naming the backend the dataset lacks is refused, named
        with pytest.raises(ValueError, match="has no"):
            resolve_backend("torchvision" if want else "ffcv", data)
    out = tmp_path / "run"
    assert run.main(["--data", data, "--out", str(out), "--backbone", "small", "--size", "16",
                     "--batch-size", "16", "--max-steps", "3", "--epochs", "1", "--workers",
                     "1", "--device", "cpu", "--no-progress", "--no-tensorboard"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["resolved"]["num_classes"] == 60  # from the manifest
    ecfg = EvalConfig(tasks=("knn",), progress=False)
    res = evaluate_run(out, data, str(tmp_path / "test"), "cpu", ecfg)
    # the figure a brute-force kNN (tests/evalref.py) gives on the features the
    # evaluator cached, read from whichever container the dataset kept; a test image
    # whose ranking or vote is a float32 near tie may go either way
    cache = evalref.cached_splits(out)
    train, test = (cache[str((tmp_path / s).resolve())] for s in ("train", "test"))
    for labeling in ("class", "colour", "shape"):
        want, close = evalref.knn_top1(train, test, labeling, ecfg.knn_k, ecfg.knn_temperature)
        assert close <= 0.1, (labeling, close)
        assert abs(res["knn"][labeling]["top1"] - want) <= close + 1e-9, (labeling, want)


def test_images_from_the_beton_equal_those_from_the_records(small_dataset):
    pytest.importorskip("ffcv")
    from pipelines.images import Images

    from_records = Images(small_dataset)
    from_beton = Images(small_dataset)
    from_beton._records = None
    from_beton._open_beton()  # small_dataset's .beton is raw: the same pixels
    assert len(from_beton) == len(from_records)
    for i in (0, 5, len(from_records) - 1):
        a, la = from_records[i]
        b, lb = from_beton[i]
        assert la == lb and np.array_equal(a, b)


def test_wandb_gets_the_same_scalars_and_a_picture(tmp_path, monkeypatch):
    """W&B is optional and not installed here: a stand-in module records what the
    Watch sends it (the real package's init/log/Image/finish calls)."""
    import importlib.machinery
    import sys
    import types

    calls = []
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)

    class Run:
        def log(self, values, step):
            calls.append((step, values))

        def finish(self):
            calls.append("finish")

    fake.init = lambda **kw: calls.append(("init", kw["mode"])) or Run()
    fake.Image = lambda array: ("image", array.shape)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    from pipelines.params import identity
    from trainer.watch import Watch, check

    check(False, "offline")
    w = Watch(tmp_path, tensorboard=False, wandb="offline", resume_step=None, config={})
    w.scalars({"step": 3, "loss": 1.5, "lr": 0.1, "probe_acc": None, "stopped": "x"})
    B, V = 2, 2
    params = {**identity(B, V), "crop": torch.rand(B, V, 4), "color": torch.rand(B, V, 4)}
    batch = types.SimpleNamespace(views=[torch.zeros(B, 3, 16, 16)] * V, params=params)
    w.views(batch, 3)
    w.close()
    assert calls[0] == ("init", "offline")
    assert calls[1] == (3, {"loss": 1.5, "lr": 0.1})  # nulls and strings left out
    assert calls[2][0] == 3 and calls[2][1]["views"][0] == "image"
    assert calls[-1] == "finish"
    assert (tmp_path / "wandb-id").is_file()


def test_plot_run_draws_every_logged_quantity_of_each_run(tmp_path):
    from tools import plot_run

    for name, scale in (("a", 1.0), ("b", 2.0)):
        (tmp_path / name).mkdir()
        rows = [{"step": s, "epoch": s / 4, "loss": scale / s, "lr": 0.1, "images_per_s": 50.0,
                 "probe_acc": None} for s in range(1, 9)]
        (tmp_path / name / "metrics.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    runs = {n: plot_run.read(tmp_path / n) for n in ("a", "b")}
    assert plot_run.keys_of(runs) == ["loss", "lr", "images_per_s"]  # no step, epoch, nulls
    out = tmp_path / "c.png"
    assert plot_run.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    from PIL import Image
    assert Image.open(out).size[0] > 3 * 400  # three panels side by side
    with pytest.raises(ValueError, match="nothing to plot for nope"):
        plot_run.main([str(tmp_path / "a"), "--out", str(out), "--keys", "nope"])
