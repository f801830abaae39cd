"""The synthetic dataset is deterministic and its labels describe the pixels."""

import colorsys
import json

import numpy as np
from conftest import run_tool
from PIL import Image

from tools.make_synthetic import COLOURS, HUE_BIN, SHAPES, generate
from trainer.probes.labelings import factors


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_same_seed_same_bytes_whatever_the_workers_and_other_seed_differs(tmp_path):
    generate(tmp_path / "a", n_train=40, n_test=10, seed=3, workers=1, quiet=True)
    generate(tmp_path / "b", n_train=40, n_test=10, seed=3, workers=2, quiet=True)
    generate(tmp_path / "c", n_train=40, n_test=10, seed=4, workers=2, quiet=True)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 50 and a == b
    same = [k for k in a if k in c and a[k] == c[k]]
    assert not same


def test_colour_label_is_the_hue_of_the_most_saturated_pixels(tmp_path):
    generate(tmp_path / "d", n_train=60, n_test=0, seed=0, quiet=True)
    meta = json.loads((tmp_path / "d" / "synthetic.json").read_text())
    assert meta["factors"] == {"colour": list(COLOURS), "shape": SHAPES}
    hues = np.array(list(COLOURS.values()), dtype=float)
    for path in (tmp_path / "d" / "train").rglob("*.jpg"):
        colour = dict(kv.split("=") for kv in path.parent.name.split(","))["colour"]
        rgb = np.asarray(Image.open(path)).reshape(-1, 3) / 255.0
        hsv = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
        obj = hsv[hsv[:, 1] > 0.5]  # the background and distractors are nearly grey
        assert len(obj) > 0.03 * len(hsv), path  # the object covers a real area
        assert (hsv[:, 1] > 0.5).mean() < 0.5
        h = np.degrees(np.angle(np.exp(1j * 2 * np.pi * obj[:, 0]).mean())) % 360
        dist = np.abs((hues - h + 180) % 360 - 180)
        # uniform within the bin; JPEG and antialiasing move the mean a few degrees
        assert dist[list(COLOURS).index(colour)] < HUE_BIN / 2 + 4, (path, h, colour)


def test_factors_recovered_from_class_names_and_cli_sizes(tmp_path):
    names = sorted(f"colour={c},shape={s}" for c in COLOURS for s in SHAPES)  # ImageFolder
    f = factors(names)
    for k, name in enumerate(names):
        c, s = (kv.split("=")[1] for kv in name.split(","))
        assert list(COLOURS)[f["colour"][k]] == c and sorted(SHAPES)[f["shape"][k]] == s
    assert factors(["cat", "dog"]) is None and factors(["a=1", "b=2"]) is None
    r = run_tool("tools.make_synthetic", "--out", tmp_path / "big", "--size", "500x375",
                 "--n-train", "3", "--n-test", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    sizes = {Image.open(p).size for p in (tmp_path / "big").rglob("*.jpg")}
    assert sizes == {(500, 375)}
    r = run_tool("tools.make_synthetic", "--out", tmp_path / "big", "--n-train", "3")
    assert r.returncode != 0 and "holds an earlier output of make_synthetic" in r.stderr
    assert "--overwrite" in r.stderr
