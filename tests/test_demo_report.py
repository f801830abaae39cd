"""The demo's report: report.json holds each seed's figures, the paired differences
are computed per seed, and the verdict says plainly when the effect does not show."""

import json

import pytest

from reports import demo as demo_report

pytest.importorskip("matplotlib")


BASE = {"colour_linear": 0.8, "colour_knn": 0.7, "colour_r2": 0.3, "shape_linear": 0.3,
        "shape_knn": 0.35}


def _rows(deltas: dict[str, list[float]]):
    """SimSiam at BASE and AugSelf at BASE + its own per-seed difference per metric
    (a metric left out: no difference)."""
    seeds = len(next(iter(deltas.values())))
    rows = []
    for seed in range(seeds):
        rows.append({"method": "SimSiam", "seed": seed, **BASE})
        rows.append({"method": "SimSiam + AugSelf", "seed": seed,
                     **{k: v + deltas.get(k, [0.0] * seeds)[seed] for k, v in BASE.items()}})
    return rows


# Each metric moves differently, so a verdict or a table row reading the wrong key
# (shape_knn for colour_r2, say) gives another sentence or other numbers.
SHOWN = {"colour_r2": [0.02, 0.01, 0.03], "colour_linear": [-0.05, -0.04, -0.06],
         "colour_knn": [0.1, -0.1, 0.2], "shape_linear": [0.07, 0.07, 0.07],
         "shape_knn": [-0.01, 0.02, -0.03]}


def test_verdict_reads_the_colour_probe_and_each_row_its_own_metric(tmp_path):
    ref = {k: 0.1 for k in demo_report.METRICS}
    md, _ = demo_report.write(tmp_path, _rows(SHOWN), ref, "setup")
    text = md.read_text()
    assert "the effect shows on the colour probe" in text
    assert "(R² +0.020 ± 0.010 (higher in every seed (3/3)))" in text
    rows = {ln.split(" | ")[0].lstrip("| "): ln for ln in text.splitlines()
            if ln.startswith("| ") and " | " in ln}
    assert rows["colour linear acc."].endswith(
        "| -0.050, -0.040, -0.060 | -0.050 ± 0.010 (lower in every seed (3/3)) |")
    assert "+0.100, -0.100, +0.200" in rows["colour kNN acc."]
    assert "not consistent" in rows["colour kNN acc."]
    assert "+0.070 ± 0.000 (higher in every seed (3/3))" in rows["shape linear acc."]
    assert "-0.010, +0.020, -0.030" in rows["shape kNN acc."]
    doc = json.loads((tmp_path / "report.json").read_text())
    assert len(doc["runs"]) == 6 and doc["runs"][1]["colour_r2"] == pytest.approx(0.32)
    assert doc["runs"][3]["shape_knn"] == pytest.approx(0.37)
    # Only the probe decides: every other metric higher in every seed, the probe not.
    flipped = {k: [0.05, 0.05, 0.05] for k in demo_report.METRICS}
    flipped["colour_r2"] = [0.02, -0.01, 0.03]
    text = demo_report.write(tmp_path, _rows(flipped), ref, "setup")[0].read_text()
    assert "does not show in this budget" in text and "not consistent across seeds" in text
    diffs, _ = demo_report.verdict(_rows(flipped), "SimSiam", "SimSiam + AugSelf", "colour_r2")
    assert diffs == pytest.approx([0.02, -0.01, 0.03])


def test_metrics_of_maps_each_evaluation_figure_to_its_name():
    """Distinct values everywhere, so a swapped task, labeling or key is caught."""
    result = {"linear": {"colour": {"top1": 0.61, "top5": 0.9}, "shape": {"top1": 0.42}},
              "knn": {"colour": {"top1": 0.55}, "shape": {"top1": 0.47}},
              "color": {"r2": 0.33, "skipped_bins": 0}}
    assert demo_report.metrics_of(result) == {
        "colour_linear": 0.61, "colour_knn": 0.55, "colour_r2": 0.33, "shape_linear": 0.42,
        "shape_knn": 0.47}
    skipped = {**result, "knn": {"colour": {"skipped": "one class only"},
                                 "shape": {"top1": 0.47}}}
    with pytest.raises(ValueError, match="knn colour top1: one class only"):
        demo_report.metrics_of(skipped)
