#!/usr/bin/env bash
# One GPU lease, one command, at most 8 minutes, numbers always back (bench/README.md).
#
#   bench/gpu-lease.sh [main|960] [OUT_DIR] [more `python -m bench` flags...]
#
# main: `--plan lease` (matmul peak; one step at 704x704x121, fast path vs reference-style, MFU;
# VAE decode; T5; audio; the 30/50-step totals composed from them; memory; a kernel table; then
# the rest while the budget lasts). 960: `--plan lease-960` (960x960x121 and 960x960x241).
# Installs the wheels of `make bench-wheels` (.whl/bench) when the host lacks them, runs the
# bench under a hard budget (BENCH_BUDGET_S, default 400 s; the JSON is rewritten after every
# section) inside `timeout` (budget + 40 s, then SIGKILL 10 s later), and keeps the inductor
# cache in .bench-cache/ so a rerun on the same host compiles warm. Writes OUT_DIR/bench.json,
# bench.kernels.txt and bench.log (OUT_DIR: default $OUT when set, else bench/.lease/<plan>).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
which=${1:-main}
case $which in
  main) plan=lease ;;
  960) plan=lease-960 ;;
  *) echo "error: first argument must be main or 960, got '$which'" >&2; exit 2 ;;
esac
shift $(( $# > 0 ? 1 : 0 ))
out_dir=${OUT:-bench/.lease/$plan}
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then  # an OUT_DIR before the bench flags
  out_dir=$1
  shift
fi
PYTHON=${PYTHON:-python3}
budget=${BENCH_BUDGET_S:-400}
mkdir -p "$out_dir" || exit 2

# 1. the wheels the GPU host lacks (diffusers, ftfy, ...), only when it lacks them
if ! "$PYTHON" -c "import diffusers, ftfy" 2>/dev/null; then
  shopt -s nullglob
  wheels=(.whl/bench/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "error: diffusers/ftfy missing and no wheels in .whl/bench (run make bench-wheels here)" >&2
    exit 2
  fi
  site=$(mktemp -d /tmp/ovi-bench-site.XXXXXX)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${wheels[@]}" || exit 2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

# 2. the bench, under a hard budget; the JSON is valid after every section
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$ROOT/.bench-cache/inductor}
timeout -k 10 $(( ${budget%.*} + 40 )) "$PYTHON" -m bench --plan "$plan" --budget-s "$budget" \
  --out "$out_dir/bench.json" "$@" 2>&1 | tee "$out_dir/bench.log"
code=${PIPESTATUS[0]}
echo "bench exit code $code; results in $out_dir (bench.json, bench.kernels.txt, bench.log)"
exit "$code"
