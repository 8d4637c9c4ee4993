#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang, ASan + UBSan) in build-fuzz/ and runs each for a
# time budget on its seeds and dictionary; new corpus entries are kept in build-fuzz/corpus/NAME
# (never in the repository), so later runs start where earlier ones stopped.
#
# usage: scripts/fuzz.sh [--seconds N] [--runs R] [--max-len B] [--jobs J] [--build-only] [NAME...]
#   --seconds N   run each fuzzer N seconds (default 600)
#   --runs R      also stop a fuzzer once it has executed R inputs (e.g. 10000000)
#   --max-len B   inputs of at most B bytes (libFuzzer's -max_len; default: its own, 4096 or the
#                 largest seed): import_file's rate halves as its inputs grow to 3 KB
#   --jobs J      compile with J jobs and run J fuzzers side by side (default 2)
#   --build-only  configure and build, run nothing
#   NAME          the fuzzers to run (default: all): json_request import_file zip_reader pickle
#                 safetensors seqrec_file percent_decode http_request
#
# Prints, per fuzzer, the executions, executions per second, coverage (libFuzzer's cov: and ft:)
# and what it found. Exits non-zero if any fuzzer found a crash, a timeout (an input running
# over 30 s), a leak or an input over 2 GB of memory: the input is in build-fuzz/artifacts/NAME/;
# minimise it with  build-fuzz/fuzz/NAME_fuzzer -minimize_crash=1 -runs=10000 INPUT
# and keep it as fuzz/regressions/NAME/<what>, which every later run replays first.
set -euo pipefail
cd "$(dirname "$0")/.."

all_fuzzers=(json_request import_file zip_reader pickle safetensors seqrec_file percent_decode http_request)
seconds=600
runs=-1
max_len=
jobs=2
build_only=0
fuzzers=()
while (($#)); do
  case $1 in
    --seconds) seconds=${2:?--seconds needs a value}; shift 2 ;;
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --max-len) max_len=${2:?--max-len needs a value}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a value}; shift 2 ;;
    --build-only) build_only=1; shift ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: error: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *)
      [[ " ${all_fuzzers[*]} " == *" $1 "* ]] || { echo "fuzz.sh: error: unknown fuzzer '$1' (expected one of: ${all_fuzzers[*]})" >&2; exit 2; }
      fuzzers+=("$1"); shift ;;
  esac
done
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: error: --seconds '$seconds' (expected a positive integer)" >&2; exit 2; }
[[ $runs == -1 || $runs =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: error: --runs '$runs' (expected a positive integer)" >&2; exit 2; }
[[ -z $max_len || $max_len =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: error: --max-len '$max_len' (expected a positive integer)" >&2; exit 2; }
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: error: --jobs '$jobs' (expected a positive integer)" >&2; exit 2; }
((${#fuzzers[@]})) || fuzzers=("${all_fuzzers[@]}")

if ! command -v clang++ > /dev/null; then
  echo "fuzz.sh: clang++ not found: installing Debian's clang, its compiler-rt (libFuzzer, sanitizers) and OpenMP runtime" >&2
  apt-get install -y --no-install-recommends clang libclang-rt-dev libomp-dev
fi

build=build-fuzz
mkdir -p "$build"
cmake -S . -B "$build" -DSEQREC_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSEQREC_BUILD_TESTS=OFF -DSEQREC_BUILD_BENCH=OFF > "$build/configure.log" 2>&1 ||
  { cat "$build/configure.log" >&2; exit 1; }
targets=(seqrec_fuzz_make_seeds)
for name in "${fuzzers[@]}"; do targets+=("${name}_fuzzer"); done
cmake --build "$build" -j"$jobs" --target "${targets[@]}"
"$build/fuzz/seqrec_fuzz_make_seeds" "$build/fuzz/seeds"
((build_only)) && exit 0

# One fuzzer: its corpus (new inputs land in the first folder), the seeds, the saved reproducers.
run_one() {
  local name=$1
  local log="$build/logs/$name.log" artifacts="$build/artifacts/$name"
  mkdir -p "$build/corpus/$name" "$artifacts" "$build/logs"
  local inputs=("$build/corpus/$name")
  for folder in "fuzz/corpus/$name" "$build/fuzz/seeds/$name" "fuzz/regressions/$name"; do
    [[ -d $folder ]] && inputs+=("$folder")
  done
  local dict=() len=()
  [[ -f fuzz/$name.dict ]] && dict=(-dict="fuzz/$name.dict")
  [[ -n $max_len ]] && len=(-max_len="$max_len")
  # -timeout=30: every input runs in well under a second, and a real hang stays caught; with
  # 10 s, ASan's quarantine recycling stalled past the limit three times in hours-long runs
  # while memory-heavy benchmarks ran beside them (zip_reader, http_request: each input
  # replayed in 0.2 s).
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0 UBSAN_OPTIONS=print_stacktrace=1 \
    "$build/fuzz/${name}_fuzzer" -max_total_time="$seconds" -runs="$runs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "${len[@]}" "${dict[@]}" "${inputs[@]}" > "$log" 2>&1
}

rm -rf "$build/logs"
mkdir -p "$build/logs"
limit="$seconds s"
((runs > 0)) && limit+=" or $runs executions"
echo "fuzz.sh: running ${fuzzers[*]} for $limit each, $jobs at a time (logs in $build/logs/)"
declare -A status
running=0
for name in "${fuzzers[@]}"; do
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
  ( run_one "$name"; echo $? > "$build/logs/$name.rc" ) || true &
  running=$((running + 1))
done
wait

# The figures, from libFuzzer's last status line and its final stats.
failed=0
printf '\n%-15s %12s %9s %8s %8s  %s\n' fuzzer executions exec/s cov ft result
for name in "${fuzzers[@]}"; do
  log="$build/logs/$name.log"
  rc=$(cat "$build/logs/$name.rc" 2> /dev/null || echo 1)
  # (A fuzzer that failed on a seed stops before its first status line: no cov: to find.)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1 || true)
  cov=$( (grep -o 'cov: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)
  ft=$( (grep -o 'ft: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)
  found=$( (grep -o "Test unit written to [^ ]*" "$log" || true) | sed 's/Test unit written to //')
  if [[ $rc == 0 && -z $found ]]; then
    result=ok
  else
    failed=1
    what=$(grep -m1 -oE 'ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|libFuzzer): [a-zA-Z-]+|runtime error: .*|\*\*\* seqrec fuzz: .{0,80}' "$log" || true)
    result="FOUND (exit $rc) ${what:-see $log}${found:+; input: $found}"
  fi
  printf '%-15s %12s %9s %8s %8s  %s\n' "$name" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$result"
done
if ((failed)); then
  echo "fuzz.sh: a fuzzer found a failure: the log is $build/logs/NAME.log, the input under $build/artifacts/NAME/" >&2
  exit 1
fi
echo "fuzz.sh: no crash, hang or leak found"
