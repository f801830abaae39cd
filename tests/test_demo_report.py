"""The demo's report: report.json holds each seed's figures, the paired differences
are computed per seed, and the verdict says plainly when the effect does not show."""

import json

import pytest

from tools import demo_report

pytest.importorskip("matplotlib")


def _rows(deltas):
    rows = []
    for seed, d in enumerate(deltas):
        base = {"colour_linear": 0.8, "colour_knn": 0.7, "colour_r2": 0.3,
                "shape_linear": 0.3, "shape_knn": 0.3}
        rows.append({"method": "SimSiam", "seed": seed, **base})
        rows.append({"method": "SimSiam + AugSelf", "seed": seed,
                     **{k: v + d for k, v in base.items()}})
    return rows


def test_verdict_and_json(tmp_path):
    ref = {k: 0.1 for k in demo_report.METRICS}
    md, _ = demo_report.write(tmp_path, _rows([0.02, 0.01, 0.03]), ref, "setup")
    text = md.read_text()
    assert "the effect shows on the colour probe" in text
    assert "+0.020 ± 0.010 (higher in every seed (3/3))" in text
    doc = json.loads((tmp_path / "report.json").read_text())
    assert len(doc["runs"]) == 6 and {"method", "seed", *demo_report.METRICS} <= set(
        doc["runs"][1])
    md, _ = demo_report.write(tmp_path, _rows([0.02, -0.01, 0.03]), ref, "setup")
    text = md.read_text()
    assert "does not show in this budget" in text and "not consistent across seeds" in text
    diffs, _ = demo_report.verdict(_rows([0.02, -0.01, 0.03]), "SimSiam", "SimSiam + AugSelf",
                                   "colour_r2")
    assert diffs == pytest.approx([0.02, -0.01, 0.03])
