"""Which torch and DALI builds `make setup` installs: the ones this machine's NVIDIA
driver can load. Standard library only: the Makefile runs it with the system python,
before the venv exists. Not a package; nothing imports it.

    python3 setup/cuda_choice.py [--cuda auto|cpu|12|13] [--torch-index URL]
                                 [--requirements requirements.txt] [--json]

The driver is read from `nvidia-smi` (its header's "Driver Version" and "CUDA
Version", the newest CUDA the driver runs). Thresholds: CUDA 13.x needs driver 580
or newer, CUDA 12.x 525.60 or newer (NVIDIA's CUDA compatibility table; DALI's
installation guide gives the same floors for nvidia-dali-cuda130 and -cuda120).

- no nvidia-smi, or one that fails (no driver reachable): no GPU to match, the
  default set: `-r requirements.txt` as it is (torch's CUDA 13 build, DALI cuda130);
- a CUDA 13 driver: the same;
- a CUDA 12 driver: requirements.txt with torch and torchvision taken from PyTorch's
  cu126 index (PyPI carries only the CUDA 13 build) and nvidia-dali-cuda120;
- an older driver, or nvidia-smi output without a version: refused (exit 1).
--cuda 12/13/cpu skips the detection (a login node without the GPU; cpu: the default).

Output: the pip arguments, one per line, after one comment line that says what was
decided and why (the Makefile keeps this as .venv/.cuda-choice); --json: the same as
JSON. A refusal prints its one line to stderr and exits 1; bad arguments exit 2.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

CU12_INDEX = "https://download.pytorch.org/whl/cu126"
CU12_TAG = "cu126"          # the CUDA 12 build PyTorch 2.14 publishes (12.6, "legacy")
DRIVER_CUDA13 = (580,)      # CUDA 13.x: driver >= 580
DRIVER_CUDA12 = (525, 60)   # CUDA 12.x: driver >= 525.60
TORCH_PKGS = ("torch", "torchvision")
DALI13, DALI12 = "nvidia-dali-cuda130", "nvidia-dali-cuda120"
OVERRIDE = "make CUDA=12 (driver 525.60-579), CUDA=13 (580+) or CUDA=cpu"


class Refused(Exception):
    """The one line that says why nothing fits, and what to do."""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def read_driver() -> tuple[str | None, str | None, str]:
    """(driver version, CUDA version, what was seen). Both None: no usable driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, None, "no nvidia-smi on PATH"
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, None, f"nvidia-smi did not run ({type(e).__name__})"
    if out.returncode != 0:
        said = (out.stdout + out.stderr).strip().splitlines()
        return None, None, f"nvidia-smi failed (exit {out.returncode}: {said[0] if said else 'no output'})"
    driver = re.search(r"Driver Version:\s*(\d+(?:\.\d+)+)", out.stdout)
    cuda = re.search(r"CUDA Version:\s*(\d+\.\d+)", out.stdout)
    if driver is None:  # the header's layout is not promised; the query interface is
        try:
            q = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=60)
            first = q.stdout.strip().splitlines()[:1] if q.returncode == 0 else []
        except (OSError, subprocess.TimeoutExpired):
            first = []
        driver = re.fullmatch(r"\s*(\d+(?:\.\d+)+)\s*", first[0]) if first else None
    d, c = (driver.group(1) if driver else None), (cuda.group(1) if cuda else None)
    if d is None and c is None:
        raise Refused("nvidia-smi ran but printed no driver or CUDA version; say which "
                      f"build to install: {OVERRIDE}")
    return d, c, f"driver {d or '?'} (CUDA {c or '?'})"


def cuda_major(driver: str | None, cuda: str | None) -> int:
    """The CUDA major version the driver runs: from its driver version (NVIDIA's table),
    else from the CUDA version nvidia-smi reports."""
    if driver is not None:
        v = _version(driver)
        return 13 if v >= DRIVER_CUDA13 else 12 if v >= DRIVER_CUDA12 else 11
    return int(cuda.split(".")[0])


def requirements(path: Path) -> list[str]:
    """Its lines, comments and blanks left out."""
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln]


def cuda12_args(path: Path, index: str) -> tuple[list[str], str]:
    """requirements.txt with the CUDA 12 builds swapped in: pip arguments and a summary."""
    args, swapped = ["--extra-index-url", index], []
    for line in requirements(path):
        name, sep, ver = line.partition("==")
        if sep and name.strip().lower() in TORCH_PKGS:
            line = f"{name.strip()}=={ver.strip().split('+')[0]}+{CU12_TAG}"
            swapped.append(line)
        elif sep and name.strip().lower() == DALI13:
            line = f"{DALI12}=={ver.strip()}"
            swapped.append(line)
        args.append(line)
    if len(swapped) != 3:
        raise Refused(f"{path} does not pin torch, torchvision and {DALI13} with ==; "
                      "cannot derive its CUDA 12 set")
    return args, ", ".join(swapped)


def decide(cuda: str, req: Path, index: str) -> dict:
    cuda = (cuda or "auto").strip().lower()
    if cuda == "auto":
        driver, version, seen = read_driver()
        if driver is None and version is None:
            major, why = None, f"{seen}: no GPU to match"
        else:
            major, why = cuda_major(driver, version), seen
            if major < 12:
                raise Refused(f"{seen} is too old for torch's and DALI's CUDA builds: they "
                              f"need driver 525.60 or newer (CUDA 12), the default set 580 "
                              f"or newer (CUDA 13); upgrade the driver, or make CUDA=cpu to "
                              f"install without GPU support")
    elif cuda in ("cpu", "none"):
        driver = version = None
        major, why = None, f"CUDA={cuda} asked"
    elif re.fullmatch(r"1[23](\.\d+)?", cuda):
        driver = version = None
        major, why = int(cuda.split(".")[0]), f"CUDA={cuda} asked"
    else:
        raise ValueError(f"CUDA={cuda!r}: expected auto, cpu, 12 or 13")
    if major == 12:
        args, what = cuda12_args(req, index)
        choice = "cuda12"
        line = (f"set-up: {why}: CUDA 12 builds: {what}; the torch wheels come from "
                f"{index} (PyPI has only their CUDA 13 build; TORCH_INDEX=URL for a mirror)")
    else:
        args, choice = ["-r", str(req)], "cuda13" if major == 13 else "default"
        line = (f"set-up: {why}: the default set, {req} as it is (torch's CUDA 13 build, "
                f"{DALI13})" + ("" if major == 13 else f"; on a GPU cluster's login node: {OVERRIDE}"))
    return {"choice": choice, "driver": driver, "cuda": version, "line": line, "pip_args": args}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cuda", default="auto", help="auto (default), cpu, 12 or 13")
    p.add_argument("--torch-index", default="", help=f"the CUDA 12 torch index ({CU12_INDEX})")
    p.add_argument("--requirements", default="requirements.txt", type=Path)
    p.add_argument("--json", action="store_true", help="the decision as JSON")
    a = p.parse_args(argv)
    try:
        d = decide(a.cuda, a.requirements, a.torch_index or CU12_INDEX)
    except ValueError as e:
        print(f"set-up: {e}", file=sys.stderr)
        return 2
    except Refused as e:
        print(f"set-up: refused: {e}", file=sys.stderr)
        return 1
    print(json.dumps(d, indent=1) if a.json else "\n".join([f"# {d['line']}", *d["pip_args"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
