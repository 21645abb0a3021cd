#!/usr/bin/env bash
# The numerics tests (pytest -m numerics: two code paths' arithmetic compared) under every CPU
# kernel family this machine can select, at 1 and 2 torch threads: six runs, one line each.
#
#   bash tests/numerics_matrix.sh [PYTHON] [PYTEST ARGS...]      (make test-numerics)
#
# A family pairs ATen's vectorised kernels (ATEN_CPU_CAPABILITY) with MKL's code path
# (MKL_CBWR; torch's GEMMs and vector math, which ATEN_CPU_CAPABILITY leaves alone) and with
# numpy's OpenBLAS kernels (OPENBLAS_CORETYPE; the protocol tests' matmuls):
#   default + COMPATIBLE + Prescott   scalar ATen kernels, MKL's SSE2-era path: an old machine
#   avx2    + AVX2       + Haswell    an AVX2 machine (AMD and Intel alike)
#   avx512  + native     + native     this machine, if it has AVX-512
# SWARM_TEST_THREADS (tests/conftest.py) sets torch's threads: 2 splits reductions and GEMMs.
# Each line also carries a fingerprint of the bits these settings give on a few kernels (an
# odd-sized matmul, bmm, sum, exp, pow, softplus, log_softmax, a numpy matmul): six different
# fingerprints show the six runs really used different arithmetic; a repeated one is reported
# (e.g. no AVX-512 on this CPU: that row runs the AVX2 kernels again).
# Exits non-zero if any run has a failure or an error, or collects no test.

set -u
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
shift $(( $# > 0 ? 1 : 0 ))

FINGERPRINT='
import hashlib, numpy as np, torch
r = np.random.default_rng(0)  # inputs from numpy: torch.randn itself depends on the family
f32 = lambda *s: torch.from_numpy(r.standard_normal(s).astype(np.float32))
a, b, w, z, x = f32(37, 1001), f32(1001, 53), f32(64, 33, 17), f32(64, 17, 129), f32(100003)
outs = [a @ b, torch.bmm(w, z), x.sum(), x.exp(), (x.abs() + 0.1) ** 0.7,
        torch.nn.functional.softplus(x), x[:3003].view(1001, 3).log_softmax(1),
        torch.from_numpy(a.double().numpy() @ b.double().numpy())]
bits = hashlib.sha1(b"".join(t.numpy().tobytes() for t in outs)).hexdigest()[:8]
print(torch.backends.cpu.get_cpu_capability(), bits)
'

log_dir="$(mktemp -d)"
trap 'rm -rf "$log_dir"' EXIT
failed=0
declare -A seen=()
printf '%-22s %-7s %-7s %-8s %6s %6s %7s %8s\n' family threads aten bits passed failed skipped seconds
for family in "default COMPATIBLE Prescott" "avx2 AVX2 Haswell" "avx512 native native"; do
    read -r aten cbwr openblas <<<"$family"
    for threads in 1 2; do
        env_=(ATEN_CPU_CAPABILITY="$aten" SWARM_TEST_THREADS="$threads")
        [[ "$cbwr" != native ]] && env_+=(MKL_CBWR="$cbwr")
        [[ "$openblas" != native ]] && env_+=(OPENBLAS_CORETYPE="$openblas")
        read -r used bits < <(env "${env_[@]}" OMP_NUM_THREADS="$threads" "$PY" -c "
import torch; torch.set_num_threads($threads)
$FINGERPRINT")
        log="$log_dir/$aten-$cbwr-$threads.log"
        start=$(date +%s%N)
        env "${env_[@]}" "$PY" -m pytest -q -p no:cacheprovider -m numerics "$@" >"$log" 2>&1
        rc=$?
        ms=$(( ($(date +%s%N) - start) / 1000000 ))
        summary=$(tail -n 1 "$log")
        count() { grep -oE "[0-9]+ $1" <<<"$summary" | grep -oE '^[0-9]+' || echo 0; }
        passed=$(count passed)
        bad=$(( $(count failed) + $(count 'errors?') ))
        note=""
        if [[ -n "${seen[$bits]:-}" ]]; then
            note="  (same kernel bits as ${seen[$bits]}: this family is not available here)"
        fi
        seen[$bits]="$aten+$cbwr/$threads"
        printf '%-22s %-7s %-7s %-8s %6s %6s %7s %6d.%d%s\n' "$aten+$cbwr" "$threads" "$used" \
            "$bits" "$passed" "$bad" "$(count skipped)" $((ms / 1000)) $((ms % 1000 / 100)) "$note"
        if [[ $rc -ne 0 || $passed -eq 0 ]]; then
            failed=1
            grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /'
            [[ $bad -eq 0 ]] && tail -n 5 "$log" | sed 's/^/    /'  # no test, or pytest broke
        fi
    done
done
exit $failed
