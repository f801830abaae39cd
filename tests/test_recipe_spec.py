"""Your own augmentation recipe, as data: every backend follows it (the same
parameters bit for bit, drawn within the recipe's ranges, views that match the
reference renderer), bad specs are named, and a run writes the recipe it
trained with."""

import json

import numpy as np
import pytest
import torch
from agreement import sources, view_psnrs
from conftest import backends_here, device_for

from pipelines.build import LoaderConfig, build_loader
from pipelines.recipe import from_spec, preset, to_spec

SPEC = {"all": {"jitter": [0.0, 0.0, 0.0, 0.3], "blur_p": 0.0},
        "views": [{"scale": [0.9, 1.0], "flip_p": 1.0, "gray_p": 0.0},
                  {"solarize_p": 1.0, "jitter_p": 1.0, "gray_p": 0.0},
                  {"size": 16, "scale": [0.05, 0.2], "flip_p": 0.0}]}


def test_spec_builds_the_views_it_says():
    r = from_spec(SPEC, preset("augself", 24))
    assert r.num_views == 3 and [v.size for v in r.views] == [24, 24, 16]
    assert r.views[0].scale == (0.9, 1.0) and r.views[1].solarize_p == 1.0
    assert all(v.jitter == (0.0, 0.0, 0.0, 0.3) and v.blur_p == 0.0 for v in r.views)
    assert to_spec(r)["views"][2]["scale"] == [0.05, 0.2]


@pytest.mark.parametrize("spec,says", [
    ({"views": [{"scael": [0.2, 1]}]}, r"recipe.views\[0\]: unknown view setting\(s\) scael"),
    ({"all": {"gray_p": 1.5}}, r"recipe.all: gray_p=1.5 is out of range: expected a finite "
                               r"number in \[0, 1\]"),
    ({"all": {"jitter": [0.4, 0.4]}}, r"recipe.all: jitter=\[0.4, 0.4\] is not 4 numbers"),
    ({"views": []}, r"recipe.views: expected a non-empty list"),
    ({"view": []}, r"recipe: unknown key\(s\) view"),
    ({"all": {"scale": [1.0, 0.2]}}, r"scale=\[1.0, 0.2\] is out of range: expected \[low, "
                                     r"high\] with low <= high"),
])
def test_bad_specs_are_named(spec, says):
    with pytest.raises(ValueError, match=says):
        from_spec(spec, preset("augself", 24))


def test_every_backend_follows_the_recipe(small_dataset):
    def stream(backend):
        loader = build_loader(LoaderConfig(data=str(small_dataset), backend=backend,
                                           preset="augself", size=24, recipe=SPEC,
                                           batch_size=32, workers=1, keep_raw=True,
                                           shuffle=False, device=device_for(backend)))
        loader.set_epoch(0)
        return loader.recipe, [b for _, b in zip(range(2), loader)]

    recipe, want = stream("torchvision")
    srcs = sources(small_dataset)
    for backend in backends_here():
        r, got = stream(backend)
        assert r == recipe
        for b, w in zip(got, want):
            assert torch.equal(b.index.cpu(), w.index.cpu())
            for k in w.params:
                assert torch.equal(b.params[k].cpu(), w.params[k].cpu()), (backend, k)
            assert [x.shape[1] for x in b.raw] == [24, 24, 16]
            p = {k: t.cpu() for k, t in b.params.items()}
            area = p["crop"][..., 2] * p["crop"][..., 3]  # fractions of the source
            assert (area[:, 0] >= 0.9 * 0.99).all() and (area[:, 2] <= 0.2 * 1.01).all()
            assert (p["flip"][:, 0] == 1).all() and (p["flip"][:, 2] == 0).all()
            assert (p["solarize"][:, 1] == 1).all() and (p["solarize"][:, 0] == 0).all()
            assert (p["gray"][:, :2] == 0).all() and (p["blur"] == 0).all()
            hue = p["color"][..., 3]
            assert hue.abs().max() <= 0.3 and hue[:, 1].abs().max() > 0.05
            assert (p["color"][..., :3] == 1).all()  # b, c, s strengths 0: factor 1
            assert np.median(view_psnrs(b, recipe, srcs)) > 35, backend


def test_run_writes_the_recipe_it_trained_with(small_dataset, tmp_path):
    yaml = pytest.importorskip("yaml")
    from trainer import run

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"recipe": {"views": SPEC["views"][:2]}, "preset": "augself",
                                   "size": 24, "backbone": "small", "batch_size": 16,
                                   "max_steps": 2, "epochs": 1}))
    out = tmp_path / "run"
    assert run.main(["--config", str(cfg), "--data", str(small_dataset), "--out", str(out),
                     "--backend", "torchvision", "--workers", "0", "--device", "cpu",
                     "--no-progress", "--no-tensorboard"]) == 0
    written = json.loads((out / "recipe.json").read_text())
    want = from_spec({"views": SPEC["views"][:2]}, preset("augself", 24))
    assert written == json.loads(json.dumps(to_spec(want)))
    assert json.loads((out / "config.json").read_text())["config"]["recipe"] == \
        {"views": SPEC["views"][:2]}
