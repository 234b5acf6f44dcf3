#!/usr/bin/env bash
# deps.sh - installs the Debian packages tq needs, only those missing.
# Run as root on a fresh Debian 12 machine (or with sudo available).
set -euo pipefail

packages=(
  build-essential cmake pkg-config      # toolchain
  libzmq3-dev libczmq-dev               # transport, sockets/actors/auth
  libmsgpack-dev                        # every payload
  libjansson-dev                        # JSON in the tq CLI
  libmicrohttpd-dev                     # tq-broker --http: /metrics, dashboard
  chromium                              # test_http loads the dashboard headless
  libcmocka-dev libsqlite3-dev                         # unit and end-to-end tests
  libpq-dev                             # the PostgreSQL store (--store URL)
  postgresql                            # its tests start private clusters
  procps                                # ps/pgrep used by scripts
  python3 python3-zmq python3-msgpack   # the Python client and its tests
  libsystemd-dev                        # sd_notify: tq-broker Type=notify
  systemd                               # systemd-analyze verify in tests
  iproute2 iptables libnetfilter-queue-dev  # test hosts in network namespaces:
                                        # ip, tc (netem), NFQUEUE where no netem
)

# `deps.sh --fuzz`: also clang with libFuzzer, for `make fuzz`
# `deps.sh --bench`: also the references `make bench` compares tq with
# (Gearman's server and C library, Python for multiprocessing.Pool)
for arg in "$@"; do
  case "$arg" in
    --fuzz) packages+=(clang libclang-rt-dev) ;;
    --bench) packages+=(gearman-job-server libgearman-dev python3) ;;
    *) echo "usage: deps.sh [--fuzz] [--bench]" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}" >&2
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || {
    echo "deps: missing ${missing[*]}; run as root or install sudo" >&2
    exit 1
  }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
