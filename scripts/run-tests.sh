#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: dependencies, a Release build with every
# test (unit, PyTorch parity, CLI), then an AddressSanitizer+UBSan build that runs the unit
# tests again (hostile model files and checkpoints must fail cleanly, never corrupt memory).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

scripts/install-deps.sh --test

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSEQREC_BUILD_TESTS=ON -DSEQREC_BUILD_BENCH=ON
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure --no-tests=error -j"$jobs"

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSEQREC_SANITIZE=ON -DSEQREC_BUILD_TESTS=ON -DSEQREC_BUILD_BENCH=OFF
cmake --build build-asan -j"$jobs" --target seqrec_unit_tests seqrec
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build-asan --output-on-failure --no-tests=error -j"$jobs" -R '^(unit|cli)\.'
