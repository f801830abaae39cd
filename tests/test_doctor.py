"""tools.doctor: every installed backend checked against the reference and timed,
a renderer that drifts is a failed check and a non-zero exit, and the report file
never replaces a file the doctor did not write."""

import dataclasses
import json

import pytest
import torch

from pipelines.build import available
from tools import doctor

# The smoke settings with one timed step: the figures are not what is under test here.
TINY = dataclasses.replace(doctor.QUICK, steps=1, warmup=1, batch=16)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(doctor, "QUICK", TINY)
    monkeypatch.setattr(doctor, "PARITY", {**doctor.PARITY, "count": 32})


def test_quick_run_checks_every_backend(tiny, tmp_path, capsys):
    out = tmp_path / "doctor.json"
    assert doctor.main(["--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and report["environment"]["torch"]
    by = {(c["backend"], c["what"]): c for c in report["checks"]}
    for b in available():
        assert by[(b, "parity")]["ok"] is True, by[(b, "parity")]
        for check in ("e2e eager", "e2e eager, no finiteness check"):
            f = by[(b, check)]["figures"]
            assert f["ratio"] == pytest.approx(f["e2e_img_per_s"] / f["ceiling_img_per_s"],
                                               rel=1e-6)
        assert by[(b, "loader")]["figures"]["img_per_s"] > 0
    if "dali-cpu" in available():  # its last stage: the numba kernel when it delivers
        # on the CPU, the Triton kernel on a GPU (the doctor trains on the GPU there)
        want = "triton" if torch.cuda.is_available() else "numba"
        assert by[("dali-cpu", "stage")]["figures"]["stage"] == want, by[("dali-cpu", "stage")]
    if "dali-gpu" in available():
        assert by[("dali-gpu", "stage")]["figures"]["stage"] == "triton", by[("dali-gpu", "stage")]
    if "triton" in report["environment"] and report["environment"]["triton"]:
        assert by[("triton", "compile sm_90")]["ok"] is True
    text = capsys.readouterr().out
    assert "every check passed" in text and "| torchvision | parity | pass |" in text


def test_a_drifting_renderer_fails_the_run(tiny, tmp_path, monkeypatch, capsys):
    """Views one level brighter than their parameters say: below the parity bounds
    of torchvision (exact), so the doctor must say FAIL and exit 1."""
    real = doctor.parity.view_psnrs

    def drifted(batch, recipe, srcs):
        batch.raw = [(r.to(torch.int16) + 1).clamp(0, 255).to(torch.uint8) for r in batch.raw]
        return real(batch, recipe, srcs)

    monkeypatch.setattr(doctor.parity, "view_psnrs", drifted)
    monkeypatch.setattr(doctor, "speed_checks", lambda *a: [])
    out = tmp_path / "r.json"
    assert doctor.main(["--quick", "--backends", "torchvision", "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert not report["ok"]
    (parity,) = [c for c in report["checks"] if c["what"] == "parity"]
    assert parity["ok"] is False and parity["figures"]["psnr_min"] < 60
    assert "| torchvision | parity | **FAIL** |" in capsys.readouterr().out


def test_report_file_is_never_a_users(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "speed_checks", lambda *a: [])
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    with pytest.raises(SystemExit) as e:  # refused before any work: argparse's exit 2
        doctor.main(["--quick", "--backends", "torchvision", "--json", str(mine)])
    assert e.value.code == 2 and "not written by tools.doctor" in capsys.readouterr().err
    assert mine.read_text() == '{"my": "notes"}'
    # its own earlier report is replaced
    ours = tmp_path / "d.json"
    ours.write_text('{"tool": "tools.doctor", "ok": false}')
    assert doctor.main(["--quick", "--backends", "torchvision", "--json", str(ours)]) == 0
    assert json.loads(ours.read_text())["ok"] is True


@pytest.mark.parametrize("argv", [["--backends", "nosuch"], ["--steps", "0"],
                                  ["--json", "/nonexistent-dir/x.json"]])
def test_bad_arguments_are_refused_before_any_work(argv, capsys):
    with pytest.raises(SystemExit) as e:
        doctor.main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("python -m tools.doctor")


def test_full_compile_sweep_names_the_spilling_specialisation(monkeypatch):
    """The full run compiles in worker processes and names a spill without failing
    the check: two clean specialisations and one measured to spill on sm_90
    (tests/test_triton_targets.py KNOWN_SPILLS)."""
    pytest.importorskip("triton")
    from pipelines import triton_targets as tt

    if torch.cuda.is_available():
        pytest.skip("the sweep targets this GPU's architecture; the spill is sm_90's")
    spills = tt.Spec(True, True, tt.MAX_RADIUS, False, True, False, "fp32")
    clean = [tt.heaviest("bf16"), tt.Spec(False, False, 0, False, False, False, "bf16")]
    monkeypatch.setattr(tt, "specialisations", lambda: [*clean, spills])
    check = doctor.triton_compile(full=True)
    assert check.ok is True and check.figures["compiled"] == 3
    assert check.figures["spills"] == [spills.name] and spills.name in check.detail
