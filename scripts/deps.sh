#!/usr/bin/env bash
# deps.sh - installs the Debian packages tq needs, only those missing.
# Run as root on a fresh Debian 12 machine (or with sudo available).
set -euo pipefail

packages=(
  build-essential cmake pkg-config      # toolchain
  libzmq3-dev libczmq-dev               # transport, sockets/actors/auth
  libmsgpack-dev                        # every payload
  libjansson-dev                        # JSON in the tq CLI
  libcmocka-dev libsqlite3-dev                         # unit and end-to-end tests
  procps                                # ps/pgrep used by scripts
  iproute2 iptables libnetfilter-queue-dev  # test hosts in network namespaces:
                                        # ip, tc (netem), NFQUEUE where no netem
)

# `deps.sh --fuzz`: also clang with libFuzzer, for `make fuzz`
if [ "${1:-}" = "--fuzz" ]; then
  packages+=(clang libclang-rt-dev)
fi

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
