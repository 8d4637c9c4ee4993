#!/usr/bin/env bash
# Proves the README's commands on brand-new Debian machines: each check runs in a minimal
# root made by mmdebstrap for the occasion (nothing from this machine's installed packages
# leaks in), with this repository cloned into it.
#
#   scripts/check-fresh-machine.sh [--suite bookworm|trixie] [--checks LIST] [--working-tree] [--keep]
#                                  [--published DIR]
#
# Checks (default: tests,demo,deb on bookworm; tests on trixie runs the Release suite only):
#   tests  the README's test command (scripts/run-tests.sh) in the fresh root
#   demo   the README's demo command (scripts/run-demo.sh) in the same root: waits for /readyz,
#          sends every curl line the demo prints, checks each answer, stops it with SIGTERM
#   deb    builds the Debian package there (cpack), installs it with apt-get in a second fresh
#          root that never saw a build dependency, and serves the bundled example from it
#
# Needs root (chroot and mounts) and mmdebstrap (installed when missing). The host's apt
# archive cache is bind-mounted into each root, so packages are downloaded once. Every mount
# is undone on exit, whatever happens. By default the repository's HEAD is cloned (what CI
# sees); --working-tree copies the working tree as it is instead (uncommitted changes too).
# --published DIR bind-mounts DIR (published checkpoints, e.g. DIR/tisasrec-ml1m/) read-only into
# the build root and exports SEQREC_PUBLISHED_CHECKPOINTS there, for the tests that read them
# (skipped without it). Also CI's entry point: .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

suite=bookworm
checks=""
working_tree=0
keep=0
published=""
while (($#)); do
  case "$1" in
    --suite) suite=${2:?--suite needs a value}; shift 2 ;;
    --checks) checks=${2:?--checks needs a value}; shift 2 ;;
    --working-tree) working_tree=1; shift ;;
    --keep) keep=1; shift ;;
    --published) published=${2:?--published needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "check-fresh-machine: error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$suite" in
  bookworm) checks=${checks:-tests,demo,deb}; test_mode=full ;;
  trixie) checks=${checks:-tests}; test_mode=release ;;
  *) echo "check-fresh-machine: error: --suite '$suite' (expected bookworm|trixie)" >&2; exit 2 ;;
esac
for c in ${checks//,/ }; do
  case "$c" in tests|demo|deb) ;; *) echo "check-fresh-machine: error: --checks: unknown check '$c' (expected tests,demo,deb)" >&2; exit 2 ;; esac
done
has_check() { [[ ",$checks," == *",$1,"* ]]; }
if [[ -n "$published" ]]; then
  [[ -d "$published" ]] || { echo "check-fresh-machine: error: --published: '$published' is not a directory" >&2; exit 2; }
  published=$(cd "$published" && pwd)
fi

[[ $(id -u) -eq 0 ]] || { echo "check-fresh-machine: error: needs root (mmdebstrap, chroot, mount)" >&2; exit 2; }
if ! command -v mmdebstrap >/dev/null; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap >/dev/null
fi

log() { printf '[fresh %s %s] %s\n' "$suite" "$(date -u +%H:%M:%S)" "$*"; }
started=$SECONDS
step_started=$SECONDS
step() {
  log "$* (previous step took $((SECONDS - step_started)) s)"
  step_started=$SECONDS
}

work=$(mktemp -d /var/tmp/seqrec-fresh.XXXXXX)
roots=()
demo_pid=""
cleanup() {
  local status=$?
  [[ -n "$demo_pid" ]] && kill -TERM -- "-$demo_pid" 2>/dev/null || true
  for root in "${roots[@]}"; do
    # Deepest first; lazily if something still holds a mount.
    for m in $(awk -v r="$root" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
  done
  if ((keep)); then
    log "kept $work"
  else
    rm -rf "$work"
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A brand-new minimal root with /proc, /sys, /dev and the apt cache mounted; resolv.conf
# copied for apt. (The build root also gets --published, read-only, below.)
new_root() {
  local root=$1
  roots+=("$root")
  mmdebstrap --quiet --variant=minbase "$suite" "$root" >/dev/null
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys"
  mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev"
  mkdir -p /var/cache/apt/archives/partial
  mount --bind /var/cache/apt/archives "$root/var/cache/apt/archives"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  # The host's own CA certificates (e.g. a TLS-inspecting egress proxy's), as its resolv.conf:
  # host network setup, not something the project installs. Node (npm) reads them from
  # NODE_EXTRA_CA_CERTS (in_root); apt fetches over http and needs none.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cat /usr/local/share/ca-certificates/*.crt > "$root/etc/host-extra-ca.crt"
  fi
}

in_root() {
  local root=$1
  shift
  local published_env=()
  [[ -n "$published" && -d "$root/published" ]] && published_env=(SEQREC_PUBLISHED_CHECKPOINTS=/published)
  [[ -f "$root/etc/host-extra-ca.crt" ]] && published_env+=(NODE_EXTRA_CA_CERTS=/etc/host-extra-ca.crt)
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 CI="${CI:-}" "${published_env[@]}" bash -c "$*"
}

build_root=$work/build-root
step "making a fresh $suite root (mmdebstrap --variant=minbase)"
new_root "$build_root"
if ((working_tree)); then
  mkdir "$build_root/project"
  git ls-files -z --cached --others --exclude-standard | tar -C "$repo" --null -T - -cf - | tar -C "$build_root/project" -xf -
  log "copied the working tree"
else
  git clone --quiet --no-hardlinks "$repo" "$build_root/project"
  [[ -z "$(git status --porcelain)" ]] || log "note: uncommitted changes are not in the clone (--working-tree copies them)"
fi
if [[ -n "$published" ]]; then
  mkdir -p "$build_root/published"
  mount --bind -o ro "$published" "$build_root/published"
  log "published checkpoints: $published, read-only at /published (SEQREC_PUBLISHED_CHECKPOINTS)"
fi

if has_check tests; then
  step "README test command: scripts/run-tests.sh ($test_mode)"
  if [[ $test_mode == release ]]; then
    in_root "$build_root" "cd /project && SEQREC_TESTS=release scripts/run-tests.sh"
  else
    in_root "$build_root" "cd /project && scripts/run-tests.sh"
  fi
fi

if has_check demo; then
  step "README demo command: scripts/run-demo.sh, then its printed requests"
  port=18080
  while (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  demo_log=$work/demo.log
  setsid chroot "$build_root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    PORT=$port bash -c "cd /project && exec scripts/run-demo.sh" > "$demo_log" 2>&1 &
  demo_pid=$!
  for _ in $(seq 1 900); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "$demo_pid" 2>/dev/null || { cat "$demo_log"; log "FAIL: the demo command exited before it was ready"; exit 1; }
    sleep 1
  done
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { tail -20 "$demo_log"; log "FAIL: demo not ready after 900 s"; exit 1; }
  # The README's requests are the curl lines the demo prints (with their continuation lines).
  python3 - "$demo_log" "$port" <<'PY'
import json, re, subprocess, sys
log, port = sys.argv[1], sys.argv[2]
text = open(log).read().replace("\\\n", " ")
commands = [line.strip() for line in text.splitlines() if line.strip().startswith("curl ")]
if len(commands) < 2:
    sys.exit(f"FAIL: expected the demo to print its curl requests, found {len(commands)}")
for command in commands:
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        sys.exit(f"FAIL: {command}\n  -> not JSON: {done.stdout[:300]!r} {done.stderr[:300]!r}")
    recs = answer.get("recommendations")
    k = json.loads(re.search(r"-d '(.*)'", command).group(1)).get("k", 10)
    if not isinstance(recs, list) or len(recs) != k or not all({"id", "score"} <= set(r) for r in recs):
        sys.exit(f"FAIL: {command}\n  -> {answer}")
    print(f"ok   {command[:90]}... -> {len(recs)} recommendations, top {recs[0]['id']}")
PY
  kill -TERM "$demo_pid"
  wait "$demo_pid" && demo_status=0 || demo_status=$?
  demo_pid=""
  grep -q "stopped" "$demo_log" && [[ $demo_status -eq 0 ]] ||
    { tail -5 "$demo_log"; log "FAIL: the demo server did not stop cleanly on SIGTERM (exit $demo_status)"; exit 1; }
  log "demo: ready, every printed request answered, stopped cleanly"
fi

if has_check deb; then
  step "Debian package: cpack in the build root"
  in_root "$build_root" "cd /project && scripts/build-deb.sh"
  deb=$(ls "$build_root"/project/build/seqrec_*_amd64.deb)
  cp "$deb" "$work/"
  log "built $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB)"
  step "installing it with apt-get in a second fresh root (no build dependencies)"
  install_root=$work/install-root
  new_root "$install_root"
  cp "$deb" "$install_root/tmp/"
  in_root "$install_root" "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/$(basename "$deb") >/dev/null"
  in_root "$install_root" "! dpkg -l | grep -E '^ii +(g\+\+|cmake|libdnnl-dev|libboost-dev)[ :]'" ||
    { log "FAIL: the install root has build dependencies"; exit 1; }
  in_root "$install_root" "set -e; seqrec --version; id seqrec; test -f /lib/systemd/system/seqrec.service; test -f /etc/default/seqrec; test -d /var/lib/seqrec"
  in_root "$install_root" "set -e
    port=18090
    # setpriv execs (runuser would stay as a parent and turn our SIGTERM into exit 143)
    setpriv --reuid=seqrec --regid=seqrec --init-groups seqrec serve --model /usr/share/seqrec/example/movielens.seqrec --history lmdb:/var/lib/seqrec/check --port \$port > /tmp/serve.log 2>&1 &
    pid=\$!
    for i in \$(seq 1 100); do (echo > /dev/tcp/127.0.0.1/\$port) 2>/dev/null && break; sleep 0.2; done
    exec 3<>/dev/tcp/127.0.0.1/\$port
    body='{\"user_interactions\": [{\"item_id\": \"1\", \"timestamp\": 1}, {\"item_id\": \"260\", \"timestamp\": 2}], \"k\": 3}'
    printf 'POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \${#body} \"\$body\" >&3
    answer=\$(cat <&3)
    echo \"\$answer\" | tail -1
    echo \"\$answer\" | head -1 | grep -q '200 OK'
    echo \"\$answer\" | tail -1 | grep -q '\"recommendations\": \[{\"id\"'
    kill -TERM \$pid; wait \$pid"
  log "deb: installed on a fresh root, serves the bundled example as the seqrec user"
fi

step "all checks passed: $checks on $suite, $((SECONDS - started)) s in all"
