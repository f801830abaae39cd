#!/usr/bin/env bash
# One GPU session's checks under a time budget, in order of value, each step capped so
# that the whole ends within BUDGET seconds; every log and JUnit file goes to OUT.
# For a lent device machine (see the developers' guide; DALI travels as wheels):
#   bash benchmarks/gpu_check.sh OUT [BUDGET=570]
# 1. the tests that touch the GPU (-v and JUnit: a cut run keeps every result's name)
# 2. the doctor on the DALI backends (parity, Triton stage, loader, e2e vs ceiling)
# 3. the loader benchmark at 224 px (dali-gpu, dali-cpu)
# 4. the rest of the suite, with whatever time is left
# Measured on an H200 (2026-11-30): 1. 75 s, 2. 172 s, 3. over 80 s with torchvision in
# it (left out here: its reference ops render ~300 img/s), 4. not finished in 222 s.
set -u
out=${1:?log folder}; BUDGET=${2:-570}; mkdir -p "$out"; log=$out/gpu.log; T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
step() { local name=$1 t=$2; shift 2; local l=$(( $(left) - 5 )); [ "$t" -gt "$l" ] && t=$l
  [ "$t" -lt 10 ] && { echo "=== $name skipped: no time" | tee -a "$log"; return; }
  local t0=$(date +%s); echo "=== $name (cap ${t}s): $*" >> "$log"
  timeout "$t" "$@" >> "$log" 2>&1; local rc=$?
  echo "=== $name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$log"; }
git rev-parse HEAD 2>/dev/null | tee -a "$log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
python3 -c "import sys, torch, triton, numpy; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)" 2>&1 | tee -a "$log"
python3 -c "import nvidia.dali as d; print('dali', d.__version__)" 2>&1 | tail -1 | tee -a "$log"
PT="python3 -m pytest -p no:cacheprovider -v -ra --timeout 160"
GPU_TESTS=$(grep -lE "mark\.gpu|cuda|every_backend|dali-gpu" tests/test_*.py | grep -v test_ddp | tr "\n" " ")  # test_ddp is CPU (gloo) and slow
step tests-gpu 190 $PT -n 10 --junitxml="$out/junit-gpu.xml" $GPU_TESTS
grep -E "^(FAILED|ERROR)| passed| failed" "$log" | tail -12
step doctor 230 python3 -m tools.doctor --backends dali-gpu,dali-cpu --steps 8 --json "$out/doctor.json"
grep -E "\| (dali|triton)" "$log" | tail -16
step loader 80 python3 -m benchmarks.loader --n-images 2048 --batch 256 --batches-per-run 6 --repeats 3 --workers 16 --sizes 224 --backends dali-gpu,dali-cpu --no-write
grep -E "^\| 224|^repeat" "$log" | tail -7
rest=$(ls tests/test_*.py | grep -v -F -x -f <(echo $GPU_TESTS | tr ' ' '\n') | tr '\n' ' ')
step tests-rest 600 $PT -n 14 --junitxml="$out/junit-rest.xml" $rest
grep -E "^(FAILED|ERROR)| passed| failed" "$log" | tail -12
echo "total $(( $(date +%s) - T0 ))s" | tee -a "$log"
