#!/usr/bin/env bash
# Installs seqrec's build and test dependencies from Debian packages (run as root or via sudo);
# enough on a brand-new minimal Debian 12 or 13 (scripts/check-fresh-machine.sh proves it).
#   scripts/install-deps.sh          build + run dependencies
#   scripts/install-deps.sh --test   also what the test suite needs (PyTorch for parity, Redis,
#                                    Chromium + Node.js/npm for the web console's browser test,
#                                    clang for the fuzzers)
#   scripts/install-deps.sh --deb    also what building the Debian package needs (dpkg-shlibdeps)
#   scripts/install-deps.sh --bench  also what bench/ runs against: PyTorch, wrk, Node.js + npm,
#                                    and onnxruntime-node (npm, into bench/node_modules)
set -euo pipefail

# ocl-icd-opencl-dev: Debian's oneDNN is built with its OpenCL GPU runtime, and its
# dnnl-config.cmake refuses to configure without OpenCL (only a Recommends of libdnnl-dev).
packages=(cmake g++ make pkg-config libdnnl-dev ocl-icd-opencl-dev libopenblas-dev libcereal-dev libboost-dev
          libsimdjson-dev libcli11-dev libxxhash-dev liblmdb-dev libhiredis-dev libgtest-dev libgmock-dev libbenchmark-dev)
case "${1:-}" in
  "") ;;
  --test)
    # python3-jsonschema: every HTTP test answer is checked against the OpenAPI document;
    # mypy: the Python client's type check.
    packages+=(python3 python3-torch python3-numpy redis-server python3-jsonschema mypy)
    # clang: the fuzzers' short run (scripts/fuzz.sh). libFuzzer and the sanitizer runtimes are
    # in compiler-rt (libclang-rt-dev), only a Recommends of clang; the kernels' OpenMP under
    # clang needs LLVM's runtime (libomp-dev; g++ brings its own libgomp).
    packages+=(clang libclang-rt-dev libomp-dev)
    # The web console's test (tests/console): playwright-core (npm, installed by the test itself
    # with `npm ci`) drives Debian's chromium headless. Node.js may come from another apt source
    # that bundles npm; add Debian's only if missing.
    packages+=(chromium)
    command -v node >/dev/null || packages+=(nodejs)
    command -v npm >/dev/null || packages+=(npm)
    ;;
  --deb) packages+=(dpkg-dev file) ;;
  --bench)
    packages+=(python3 python3-torch python3-numpy wrk)
    # Node.js may come from another apt source that bundles npm; add Debian's only if missing.
    command -v node >/dev/null || packages+=(nodejs)
    command -v npm >/dev/null || packages+=(npm)
    ;;
  *) echo "install-deps: error: unknown option '$1' (expected --test, --deb or --bench)" >&2; exit 2 ;;
esac

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

if [[ "${1:-}" == "--bench" ]]; then
  # The ONNX Runtime peer: its install script only fetches optional GPU bits (and fails
  # offline); the CPU library ships inside the package.
  (cd "$(dirname "$0")/../bench" && npm ci --ignore-scripts --no-audit --no-fund)
fi
