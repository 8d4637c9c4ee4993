#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: dependencies, a Release build with every
# test (unit, PyTorch parity, CLI, HTTP, eval; the unit and parity suites once per kernel CPU
# path this machine runs), then an AddressSanitizer+UBSan build that runs the unit and CLI
# tests again (hostile model files and checkpoints must fail cleanly, never corrupt memory),
# then every fuzzer (fuzz/, clang + ASan/UBSan) for a short bounded time: a parser that a few
# seconds of mutations crash fails the suite (scripts/fuzz.sh runs them long).
# SEQREC_TESTS=release runs the Release build's tests only, on the best CPU path only (CI's
# Debian 13 root).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
mode=${SEQREC_TESTS:-full}
[[ $mode == full || $mode == release ]] || { echo "run-tests: error: SEQREC_TESTS='$mode' (expected full|release)" >&2; exit 2; }

scripts/install-deps.sh --test

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSEQREC_BUILD_TESTS=ON -DSEQREC_BUILD_BENCH=ON
cmake --build build -j"$jobs"
if [[ $mode == release ]]; then
  # The Release build's tests once, on the best CPU path (the per-path reruns are the full mode's).
  ctest --test-dir build --output-on-failure --no-tests=error -j"$jobs" -E '^isa\.'
  exit 0
fi
ctest --test-dir build --output-on-failure --no-tests=error -j"$jobs"

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSEQREC_SANITIZE=ON -DSEQREC_BUILD_TESTS=ON -DSEQREC_BUILD_BENCH=OFF
cmake --build build-asan -j"$jobs" --target seqrec_unit_tests seqrec
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build-asan --output-on-failure --no-tests=error -j"$jobs" -R '^(unit|cli)\.'

# SEQREC_FUZZ_SECONDS: how long each fuzzer runs here (default 20; 0 skips them).
fuzz_seconds=${SEQREC_FUZZ_SECONDS:-20}
[[ $fuzz_seconds =~ ^[0-9]+$ ]] || { echo "run-tests: error: SEQREC_FUZZ_SECONDS='$fuzz_seconds' (expected seconds)" >&2; exit 2; }
if ((fuzz_seconds > 0)); then
  scripts/fuzz.sh --seconds "$fuzz_seconds" --jobs "$jobs"
fi
