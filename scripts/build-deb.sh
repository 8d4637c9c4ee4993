#!/usr/bin/env bash
# Builds the Debian package seqrec_<version>_amd64.deb in build/ (packaging/CMakeLists.txt):
# the binary, the systemd unit, /etc/default/seqrec, the MovieLens demo model.
#   sudo apt-get install ./build/seqrec_*_amd64.deb
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
scripts/install-deps.sh --deb
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc)" --target seqrec seqrec_example_model
(cd "$build" && cpack -G DEB >/dev/null)
ls "$build"/seqrec_*_amd64.deb
