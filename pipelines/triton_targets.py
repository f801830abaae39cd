"""The photometric kernel (photometric_triton._render) compiled for real GPU
targets on any machine, GPU or not: which specialisations the loaders can
launch, and what each costs in registers and local memory on an architecture.

Why: on a machine without a GPU the kernel only ever runs in Triton's
interpreter, which neither compiles it nor allocates its registers; a kernel
that no longer compiles for sm_90, or one that starts spilling to local memory,
would first show on a GPU. ``triton.compile`` with an explicit ``GPUTarget`` runs
the whole chain (TTIR -> TTGIR -> LLVM IR -> PTX -> cubin, with the ptxas that
ships inside the triton wheel) without a driver, and the wheel's
``cuobjdump --dump-resource-usage`` reads the cubin (measured here, triton 3.8:
the compiled kernel's ``n_regs``/``n_spills`` are only filled in when a driver
loads it, so cuobjdump it is).

API (tests/test_triton_targets.py, tools/doctor.py):

    specialisations()      -> list[Spec]: every constexpr combination the loaders
                              can launch, each output dtype
    spec_of(view, dtype, keep_raw) -> Spec: the one photometric_triton.render
                              launches for a view of a recipe
    compile_for(spec, arch) -> {"arch", "registers", "local_bytes", "stack_bytes",
                              "shared_bytes", "seconds"}; raises when the kernel does
                              not compile for ``arch`` (80 = sm_80, 90 = sm_90, ...)
    python -m pipelines.triton_targets [--arch 90]: every specialisation, one
                              JSON line each; exit 1 on a failure or a spill

Measured (2026-11, triton 3.8, this 2-core machine): all 192 specialisations
compile for sm_80, sm_90 and sm_100 (the wheel's ptxas-blackwell, CUDA 13.3,
takes arch >= 100), 0.25-1.6 s of CPU each; 54-164 registers; three spill
8 bytes (tests/test_triton_targets.py, KNOWN_SPILLS).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass

import torch

from pipelines.recipe import MAX_SIZE, PRESETS, SIGMA, ViewRecipe

# Output dtypes a loader can be asked for: the trainer's --precision (bf16, fp16,
# fp32; fp64 is the slow numerical reference, also a reachable launch) -> build_loader's
# dtype -> the kernel's `out` pointer type.
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
          torch.float64: "fp64"}


@dataclass(frozen=True)
class Spec:
    """One specialisation of _render: its constexprs and the element type of ``out``."""
    hue: bool
    blur: bool
    radius: int       # taps each side of the blur, ceil(3 x the view's highest sigma); 0 unblurred
    solarize: bool
    rotate: bool
    raw: bool         # the loader keeps the uint8 views (LoaderConfig.keep_raw)
    dtype: str        # "bf16", "fp16", "fp32" or "fp64"

    @property
    def name(self) -> str:
        flags = [f for f, on in (("hue", self.hue), (f"blur{self.radius}", self.blur),
                                 ("sol", self.solarize), ("rot", self.rotate),
                                 ("raw", self.raw)) if on]
        return "-".join(flags or ["plain"]) + f"-{self.dtype}"

    def constexprs(self) -> dict:
        from pipelines.photometric_triton import BLOCK
        return {"HUE": self.hue, "BLUR": self.blur, "RADIUS": self.radius,
                "SOLARIZE": self.solarize, "ROTATE": self.rotate, "RAW": self.raw,
                "BLOCK": BLOCK}


def spec_of(view: ViewRecipe, dtype: torch.dtype, keep_raw: bool = False) -> Spec:
    """The specialisation photometric_triton.render launches for ``view`` (the same
    expressions; tests/test_triton_targets.py holds the two together by recording
    render's launch)."""
    blur = view.blur_p > 0
    return Spec(hue=bool(view.jitter_p > 0 and view.jitter[3] > 0), blur=blur,
                radius=math.ceil(3 * view.blur_sigma[1]) if blur else 0,
                solarize=bool(view.solarize_p > 0), rotate=bool(view.rotate),
                raw=bool(keep_raw), dtype=DTYPES[dtype])


def preset_radii() -> list[int]:
    """Blur radii of every blurred view of every preset (at the default 224 px)."""
    return sorted({spec_of(v, torch.float32).radius for make in PRESETS.values()
                   for v in make(224, 96).views if v.blur_p > 0})


# The largest radius a recipe can ask for: blur_sigma's high end is at most
# SIGMA.hi (100 px), and check_views wants the radius under the view's side
# (at most MAX_SIZE), so ceil(3 x 100) = 300 taps each side is reachable.
MAX_RADIUS = min(math.ceil(3 * SIGMA.hi), MAX_SIZE - 1)


def flag_specs(dtype: str = "fp32") -> list[Spec]:
    """Every flag combination at one output dtype: each of HUE, BLUR, SOLARIZE,
    ROTATE and RAW is independently reachable (a recipe spec sets jitter/jitter_p,
    blur_p, solarize_p and rotate per view; keep_raw is a loader setting), and a
    blurred one at each preset radius and at MAX_RADIUS.

    Radii: RADIUS is the constexpr trip count of the blur's tap loops, and any
    ceil(3 sigma) in 1..300 is reachable from a spec's blur_sigma: all of them
    would be ~10 hours of CPU for four dtypes and three architectures. Compiled
    here: the presets' radii (6: sigma up to 2.0 in every preset and in a spec
    that leaves blur_sigma alone), what runs, and MAX_RADIUS, the other end of
    the loop bound. A radius between is the same code with another constant
    bound, so it compiles if these do; its register use is not proven (the
    bound moves ptxas's allocation: measured 6 vs 300, up to ~20 registers
    either way for the same flags).
    """
    out = []
    for hue, blur, sol, rot, raw in itertools.product((False, True), repeat=5):
        for radius in (preset_radii() + [MAX_RADIUS]) if blur else [0]:
            out.append(Spec(hue, blur, radius, sol, rot, raw, dtype))
    return out


def heaviest(dtype: str = "fp32") -> Spec:
    """Every flag on at the largest radius: the most code live at once."""
    return Spec(True, True, MAX_RADIUS, True, True, True, dtype)


def specialisations() -> list[Spec]:
    """Every specialisation the loaders can launch: flag_specs() at each dtype."""
    return [s for d in DTYPES.values() for s in flag_specs(d)]


def signature(spec: Spec) -> dict[str, str]:
    """_render's argument types as a launch from render() gives them: uint8 crops
    and raw (raw is the crops themselves when not kept), float32 parameters and
    scratch, ``out`` in the spec's dtype, int32 column/stride/side, float32
    normalisation constants, then the constexprs."""
    sig = {"src": "*u8", "rows": "*fp32", "col": "i32", "rest_stride": "i32",
           "out": f"*{spec.dtype}", "raw": "*u8", "tmp": "*fp32", "S": "i32"}
    sig.update({k: "fp32" for k in ("m0", "m1", "m2", "s0", "s1", "s2")})
    sig.update({k: "constexpr" for k in spec.constexprs()})
    return sig


def _bin(name: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def resource_usage(cubin: bytes, kernel: str = "_render") -> dict[str, int]:
    """REG, STACK, SHARED and LOCAL (bytes) of ``kernel`` in a cubin, read by the
    cuobjdump inside the triton wheel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_bin("cuobjdump"), "--dump-resource-usage", f.name],
                              check=True, capture_output=True, text=True).stdout
    # "Function _render:\n REG:96 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:... "
    m = re.search(rf"Function {re.escape(kernel)}:\s*\n\s*(.*)", text)
    if m is None:
        raise RuntimeError(f"cuobjdump printed no resource usage for {kernel}:\n{text}")
    fields = dict(re.findall(r"(\w+):(\d+)", m.group(1)))
    return {k: int(fields[k]) for k in ("REG", "STACK", "SHARED", "LOCAL")}


def compile_for(spec: Spec, arch: int, options: dict | None = None) -> dict:
    """Compile _render for ``spec`` to a cubin for sm_``arch`` (80, 90, 100, ...;
    no GPU needed) -> {"arch": "sm_90", "registers", "local_bytes", "stack_bytes",
    "shared_bytes", "seconds"}; raises what Triton raises (CompilationError,
    PTXASError, ...) when it does not compile.

    local_bytes: local memory per thread, the stack frame plus .local arrays.
    Register spills land in the stack frame (stack_bytes; the kernel calls no
    functions, so a frame is spills): cuobjdump's LOCAL field alone reads 0 for a
    kernel that spills (measured: 8 bytes of STACK, one STL/LDL in its SASS).

    ``options``: Triton compile options as a launch would pass them (num_warps,
    maxnreg); none, as render() launches. Pointers carry the 16-byte divisibility
    hint a launch gives torch's fresh allocations; the int32 arguments carry none
    (their values vary by view). Triton's cache (TRITON_CACHE_DIR, default
    ~/.triton/cache) is used: its key covers the kernel's source and that of the
    functions it calls, the constexprs, the options, the target and ptxas's
    version, so an edited kernel is compiled again."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile
    from triton.runtime.jit import JITFunction

    from pipelines.photometric_triton import _render
    if not isinstance(_render, JITFunction):
        raise RuntimeError("the kernel was imported under TRITON_INTERPRET=1 (interpreted, "
                           "not compilable): compile for GPU targets in a process without it")
    sig = signature(spec)
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(sig.values())
             if t.startswith("*")}
    t0 = time.perf_counter()
    kernel = compile(ASTSource(_render, sig, spec.constexprs(), attrs),
                     target=GPUTarget("cuda", arch, 32), options=options)
    seconds = time.perf_counter() - t0
    use = resource_usage(kernel.asm["cubin"], kernel.name)
    return {"arch": f"sm_{arch}", "registers": use["REG"],
            "local_bytes": use["STACK"] + use["LOCAL"], "stack_bytes": use["STACK"],
            "shared_bytes": use["SHARED"], "seconds": seconds}


def main(argv=None) -> int:
    """The full sweep: every specialisation for each architecture, a line each,
    the ones with local memory last; exit 1 if any fails to compile or spills.
    ~0.7 s of CPU a compile: ~7 minutes for three architectures (576)."""
    import argparse
    import json
    ap = argparse.ArgumentParser(prog="python -m pipelines.triton_targets",
                                 description=main.__doc__)
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90, 100])
    args = ap.parse_args(argv)
    bad = []
    for arch, spec in itertools.product(args.arch, specialisations()):
        try:
            row = compile_for(spec, arch)
        except Exception as e:  # noqa: BLE001 - reported per specialisation
            row = {"arch": f"sm_{arch}", "error": f"{type(e).__name__}: {e}"[:300]}
        row["spec"] = spec.name
        print(json.dumps(row), flush=True)
        if "error" in row or row["local_bytes"]:
            bad.append(row)
    for row in bad:
        print("FAIL", json.dumps(row))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
