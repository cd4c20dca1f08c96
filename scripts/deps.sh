#!/usr/bin/env bash
# deps.sh — installs the Debian 12 packages organism needs: `deps.sh` for building and
# running, `deps.sh --test` adds what the test suite uses (nats-server, clang for the
# fuzzers and sanitizers, python3 for the end-to-end tests).
set -euo pipefail
build=(meson ninja-build gcc pkg-config libsystemd-dev libyaml-dev libsqlite3-dev libjansson-dev libnats-dev libpci-dev)
build+=(libdrm-dev)  # gpuworker: drmGetDevices2 cross-check
test=(python3 clang libclang-rt-14-dev nats-server sqlite3 util-linux git)
test+=(collectd-core) # bench_agent.py: resident memory side by side with collectd
build+=(libgit2-dev libcurl4-openssl-dev)  # deploy
test+=(procps)
test+=(debhelper dpkg-dev fakeroot lintian) # package-test.sh: dpkg-buildpackage, lintian
test+=(prometheus)     # promtool: check rules and the agent's textfile (test_observability.py)
test+=(bash-completion groff-base man-db) # completion test, man page rendering
pkgs=("${build[@]}")
[ "${1:-}" = "--test" ] && pkgs+=("${test[@]}")
missing=()
for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
        echo "Installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
