"""The set-up's choice of torch and DALI builds for the NVIDIA driver (issue 24.5):
setup/cuda_choice.py run against a fake `nvidia-smi` on PATH (a CUDA 12 and a CUDA 13
driver, none, one that fails, one that prints garbage, one too old), and the Makefile
that uses it, run with a fake venv python that only records what pip would install.
Nothing is downloaded."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "setup" / "cuda_choice.py"
CU12_INDEX = "https://download.pytorch.org/whl/cu126"


def _header(driver: str, cuda: str) -> str:
    return ("Tue Nov 24 10:00:00 2026\n"
            "+-----------------------------------------------------------------------------------------+\n"
            f"| NVIDIA-SMI {driver}              Driver Version: {driver}      CUDA Version: {cuda}     |\n"
            "|-----------------------------------------+------------------------+----------------------+\n"
            "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |\n")


CUDA12 = _header("550.54.15", "12.4")
CUDA13 = _header("580.65.06", "13.0")
CUDA11 = _header("470.82.01", "11.4")
FAILED = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
          "Make sure that the latest NVIDIA driver is installed and running.\n")


def fake_smi(bindir: Path, out: str, code: int = 0, query: str | None = None) -> Path:
    """An nvidia-smi that prints `out` and exits `code` (`query` for --query-gpu), and
    records each call in bindir/calls."""
    bindir.mkdir(parents=True, exist_ok=True)
    (bindir / "header.txt").write_text(out)
    (bindir / "query.txt").write_text(query if query is not None else out)
    exe = bindir / "nvidia-smi"
    exe.write_text(f"""#!/bin/sh
echo "$*" >> '{bindir}/calls'
case "$1" in --query-gpu=*) f=query.txt ;; *) f=header.txt ;; esac
while IFS= read -r line; do echo "$line"; done < '{bindir}/'$f
exit {code}
""")
    exe.chmod(0o755)
    return bindir


def choose(path: str, *args: str) -> tuple[int, dict | None, str]:
    r = subprocess.run([sys.executable, str(HELPER), "--json", *args], cwd=ROOT,
                       env={**os.environ, "PATH": path}, capture_output=True, text=True,
                       timeout=60)
    return r.returncode, (json.loads(r.stdout) if r.returncode == 0 else None), r.stderr


def pins() -> dict[str, str]:
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    return dict(ln.split("==") for ln in lines if "==" in ln)


DEFAULT = ["-r", "requirements.txt"]


def test_a_cuda12_driver_gets_the_cuda12_builds_from_pytorchs_index(tmp_path):
    rc, d, err = choose(str(fake_smi(tmp_path / "bin", CUDA12)))
    assert rc == 0, err
    p = pins()
    assert d["choice"] == "cuda12" and (d["driver"], d["cuda"]) == ("550.54.15", "12.4")
    args = d["pip_args"]
    assert args[:2] == ["--extra-index-url", CU12_INDEX]
    assert f"torch=={p['torch']}+cu126" in args
    assert f"torchvision=={p['torchvision']}+cu126" in args
    assert f"nvidia-dali-cuda120=={p['nvidia-dali-cuda130']}" in args
    assert not any("cuda130" in a for a in args)
    # everything else is requirements.txt's pins as they are
    others = {f"{k}=={v}" for k, v in p.items() if k not in ("torch", "torchvision", "nvidia-dali-cuda130")}
    assert others == set(args[2:]) - {a for a in args if "cu126" in a or "cuda120" in a}
    assert "driver 550.54.15 (CUDA 12.4)" in d["line"] and CU12_INDEX in d["line"]
    assert "\n" not in d["line"]


def test_a_cuda13_driver_keeps_todays_set(tmp_path):
    rc, d, err = choose(str(fake_smi(tmp_path / "bin", CUDA13)))
    assert rc == 0, err
    assert d["choice"] == "cuda13" and (d["driver"], d["cuda"]) == ("580.65.06", "13.0")
    assert d["pip_args"] == DEFAULT
    assert "driver 580.65.06 (CUDA 13.0)" in d["line"]


def test_no_nvidia_smi_keeps_todays_set(tmp_path):
    (tmp_path / "empty").mkdir()
    rc, d, err = choose(str(tmp_path / "empty"))
    assert rc == 0, err
    assert d["choice"] == "default" and d["pip_args"] == DEFAULT
    assert "no nvidia-smi" in d["line"] and "CUDA=12" in d["line"]


def test_a_failing_nvidia_smi_is_no_gpu_and_keeps_todays_set(tmp_path):
    rc, d, err = choose(str(fake_smi(tmp_path / "bin", FAILED, code=9)))
    assert rc == 0, err
    assert d["choice"] == "default" and d["pip_args"] == DEFAULT
    assert "exit 9" in d["line"] and "couldn't communicate" in d["line"]


def test_garbage_from_nvidia_smi_is_refused_with_the_override(tmp_path):
    rc, d, err = choose(str(fake_smi(tmp_path / "bin", "Segmentation fault\n\x00\x01 ???\n")))
    assert rc == 1 and d is None
    assert err.count("\n") == 1 and "refused" in err and "CUDA=12" in err and "CUDA=13" in err


def test_a_header_without_versions_falls_back_to_the_query(tmp_path):
    rc, d, err = choose(str(fake_smi(tmp_path / "bin", "| NVIDIA-SMI |\n", query="535.104.05\n")))
    assert rc == 0, err
    assert d["choice"] == "cuda12" and d["driver"] == "535.104.05"
    calls = (tmp_path / "bin" / "calls").read_text().splitlines()
    assert calls == ["", "--query-gpu=driver_version --format=csv,noheader"]


def test_a_driver_older_than_cuda12_is_refused(tmp_path):
    rc, d, err = choose(str(fake_smi(tmp_path / "bin", CUDA11)))
    assert rc == 1
    assert "470.82.01" in err and "525.60" in err and "CUDA=cpu" in err and err.count("\n") == 1


@pytest.mark.parametrize("cuda, choice", [("12", "cuda12"), ("13", "cuda13"), ("cpu", "default")])
def test_the_override_wins_without_asking_the_driver(tmp_path, cuda, choice):
    bindir = fake_smi(tmp_path / "bin", CUDA13 if cuda == "12" else CUDA12)
    rc, d, err = choose(str(bindir), "--cuda", cuda)
    assert rc == 0, err
    assert d["choice"] == choice
    assert (d["pip_args"] == DEFAULT) == (choice != "cuda12")
    assert not (bindir / "calls").exists()


def test_a_mirror_replaces_pytorchs_index_and_a_bad_override_is_an_error(tmp_path):
    rc, d, _ = choose(str(tmp_path), "--cuda", "12", "--torch-index", "https://mirror.example/cu126")
    assert rc == 0 and d["pip_args"][:2] == ["--extra-index-url", "https://mirror.example/cu126"]
    rc, _, err = choose(str(tmp_path), "--cuda", "11.8")
    assert rc == 2 and "expected auto, cpu, 12 or 13" in err


# --- the Makefile: what `make setup` would install, and when it installs again ---

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def _system_path() -> str:
    """PATH without any real nvidia-smi (a GPU machine has one)."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if d and not os.path.exists(os.path.join(d, "nvidia-smi")))


@pytest.fixture
def project(tmp_path):
    """The set-up's files in a scratch folder, with a venv whose python only logs."""
    proj = tmp_path / "proj"
    (proj / "setup").mkdir(parents=True)
    for f in ("Makefile", "requirements.txt", "pyproject.toml", "setup/cuda_choice.py"):
        shutil.copy(ROOT / f, proj / f)
    py = proj / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(f"#!/bin/sh\necho \"$*\" >> '{tmp_path}/pip.log'\n")
    py.chmod(0o755)
    return proj


def make_setup(proj: Path, bindir: Path | None, *extra: str) -> subprocess.CompletedProcess:
    path = _system_path() if bindir is None else f"{bindir}{os.pathsep}{_system_path()}"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA", "TORCH_INDEX", "MAKEFLAGS")}
    return subprocess.run(["make", "--no-print-directory", "setup", "APT_PKGS=",
                           f"PY_BOOT={sys.executable}", *extra],
                          cwd=proj, env={**env, "PATH": path}, capture_output=True, text=True,
                          timeout=120)


def installs(proj: Path) -> list[str]:
    """The `pip install -q ...` lines the fake python saw, less pip's own upgrade,
    ffcv and the project itself (unchanged by the choice)."""
    log = proj.parent / "pip.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [ln.removeprefix("-m pip install -q ") for ln in lines
            if not any(s in ln for s in ("--upgrade pip", "ffcv==", "-e ."))]


@needs_make
def test_make_installs_the_choice_and_reinstalls_only_when_it_changes(project, tmp_path):
    cu12 = " ".join(["--extra-index-url", CU12_INDEX,
                     *[a for a in choose(str(fake_smi(tmp_path / "b12", CUDA12)))[1]["pip_args"][2:]]])
    r = make_setup(project, tmp_path / "b12")
    assert r.returncode == 0, r.stderr
    assert installs(project) == [cu12]
    assert "driver 550.54.15 (CUDA 12.4)" in r.stdout and CU12_INDEX in r.stdout
    assert (project / ".venv" / ".setup-stamp").exists()

    r = make_setup(project, tmp_path / "b12")                     # unchanged: nothing
    assert r.returncode == 0, r.stderr
    assert installs(project) == [cu12]

    r = make_setup(project, fake_smi(tmp_path / "b13", CUDA13))   # the driver moved to 580
    assert r.returncode == 0, r.stderr
    assert installs(project) == [cu12, "-r requirements.txt"]

    r = make_setup(project, tmp_path / "b13", "CUDA=12")          # the override
    assert r.returncode == 0, r.stderr
    assert installs(project) == [cu12, "-r requirements.txt", cu12]

    stamp = (project / ".venv" / ".setup-stamp").stat().st_mtime_ns
    r = make_setup(project, fake_smi(tmp_path / "b11", CUDA11))   # too old: refused
    assert r.returncode != 0
    assert "refused" in r.stderr and "470.82.01" in r.stderr
    assert installs(project) == [cu12, "-r requirements.txt", cu12]
    assert (project / ".venv" / ".setup-stamp").stat().st_mtime_ns == stamp


@needs_make
def test_make_leaves_a_venv_set_up_before_the_choice_existed(project):
    """A venv set up by the Makefile before the choice holds the default set: a machine
    with no GPU (or a CUDA 13 driver) does not reinstall it."""
    (project / ".venv" / ".setup-stamp").touch()
    r = make_setup(project, None)
    assert r.returncode == 0, r.stderr
    assert installs(project) == []
    assert (project / ".venv" / ".cuda-choice").read_text().splitlines()[1:] == DEFAULT
