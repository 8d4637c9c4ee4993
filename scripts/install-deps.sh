#!/usr/bin/env bash
# Installs seqrec's build and test dependencies from Debian packages (run as root or via sudo).
#   scripts/install-deps.sh          build + run dependencies
#   scripts/install-deps.sh --test   also what the test suite needs (PyTorch for parity, Redis)
set -euo pipefail

packages=(cmake g++ make pkg-config libdnnl-dev libopenblas-dev libcereal-dev libboost-dev
          libsimdjson-dev libcli11-dev liblmdb-dev libhiredis-dev libgtest-dev libgmock-dev libbenchmark-dev)
if [[ "${1:-}" == "--test" ]]; then
  packages+=(python3 python3-torch python3-numpy redis-server)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
