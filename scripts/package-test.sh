#!/usr/bin/env bash
# package-test.sh — builds the Debian packages from a copy of the tree (the source tree
# stays clean), runs lintian, installs them with apt-get, checks and starts the packaged
# agentd (systemd when it is PID 1, else directly in the background), asks it
# `agentctl status`, purges the packages and checks that nothing is left behind.
# Prints one line per step, "ok: ..." / "FAILED: ..." / "skip: ...", and at the end
# "package: N passed, N failed, N skipped" (scripts/test.sh adds these to its counts).
# Needs root for the install steps (without root: build and lintian only).
# PACKAGE_TEST_KEEP=1 keeps the work folder (the .deb files and the logs).
#
# The machine may be the one that runs the other tests and may hold an install of
# scripts/install.sh under /usr/local with its own /etc/organism: then the install
# steps are skipped rather than mix the two (a purge would remove /etc/organism).
set -uo pipefail
cd "$(dirname "$0")/.."
src=$PWD
passed=0 failed=0 skipped=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
fail() { echo "FAILED: $*"; failed=$((failed + 1)); }
skip() { echo "skip: $*"; skipped=$((skipped + 1)); }
finish() {
        echo "package: $passed passed, $failed failed, $skipped skipped"
        [ "$failed" = 0 ]
        exit
}

work=$(mktemp -d /tmp/organism-package.XXXXXX)
agentd_pid=""
cleanup() {
        if [ -n "$agentd_pid" ] && kill -0 "$agentd_pid" 2>/dev/null; then
                kill "$agentd_pid"
                for _ in $(seq 100); do kill -0 "$agentd_pid" 2>/dev/null || break; sleep 0.1; done
        fi
        [ -n "${PACKAGE_TEST_KEEP:-}" ] && echo "kept: $work" || rm -rf "$work"
}
trap cleanup EXIT

# 1. build, in a copy of the tracked (and new, not ignored) files
command -v dh >/dev/null && command -v dpkg-buildpackage >/dev/null ||
        { skip "debhelper or dpkg-dev not installed (scripts/deps.sh --test installs them)"; finish; }
mkdir -p "$work/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        { git ls-files -z; git ls-files -z --others --exclude-standard; } | tar --null -T - -c | tar -x -C "$work/src"
else # a tarball of the tree: everything but build folders
        tar -c --exclude='./build*' --exclude='./obj-*' --exclude=./.git . | tar -x -C "$work/src"
fi
start=$SECONDS
if (cd "$work/src" && DEB_BUILD_OPTIONS="nocheck parallel=2" dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1); then
        ok "dpkg-buildpackage ($((SECONDS - start))s): $(cd "$work" && ls ./*.deb | tr '\n' ' ')"
else
        fail "dpkg-buildpackage, the end of its log:"; tail -40 "$work/build.log"; finish
fi
debs=("$work"/organism_*.deb "$work"/organism-dev_*.deb)

# 2. lintian: every remaining tag is explained in debian/README.source or an override
if command -v lintian >/dev/null; then
        tags=$(cd "$work" && lintian --tag-display-limit 0 --display-info --pedantic ./*.changes 2>&1 | grep -E '^[EWIPX]: ' || true)
        errors=$(grep -E '^(E|W): ' <<<"$tags" || true)
        if [ -n "$tags" ]; then
                echo "lintian, remaining tags (each explained in debian/README.source):"; sed 's/^/  /' <<<"$tags"
        fi
        if [ -z "$errors" ]; then ok "lintian: no error or warning"; else fail "lintian: errors or warnings above"; fi
        unexplained=$(awk '{ print $3 }' <<<"$tags" | sort -u | while read -r t; do
                [ -n "$t" ] && ! grep -qF -- "$t" debian/README.source && echo "$t"; done)
        if [ -z "$unexplained" ]; then ok "lintian: every remaining tag explained in debian/README.source"
        else fail "lintian tags not explained in debian/README.source: $unexplained"; fi
else
        skip "lintian not installed (scripts/deps.sh --test installs it)"
fi

# 3. contents: root-owned, 0644/0755 (agentd's trust rules refuse group/other-writable files)
bad=$(for d in "${debs[@]}"; do dpkg-deb -c "$d"; done | awk '$2 != "root/root" || $1 ~ /^.....w|^........w/')
if [ -z "$bad" ]; then ok "package files root-owned, writable by root only"; else fail "package files:"; echo "$bad"; fi

if [ "$(id -u)" != 0 ]; then
        skip "install, start, purge: not root"; finish
fi
if [ -e /etc/organism ] || [ -e /usr/local/sbin/agentd ] || [ -S /run/organism/agentd.sock ] ||
        dpkg-query -W -f='${Status}\n' organism 2>/dev/null | grep -qE 'installed|config-files'; then
        skip "install, start, purge: this machine has an organism already (/etc/organism, /usr/local/sbin/agentd, a running agentd or the package)"
        finish
fi

# 4. install
if (cd "$work" && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./organism_*.deb ./organism-dev_*.deb \
        >"$work/install.log" 2>&1); then
        ok "apt-get install ./organism_*.deb ./organism-dev_*.deb"
else
        fail "apt-get install:"; tail -30 "$work/install.log"; finish
fi
getent group organism >/dev/null && ok "postinst: group organism exists" || fail "postinst: no group organism"
[ -d /run/organism ] && [ "$(stat -c %G /run/organism)" = organism ] && ok "postinst: /run/organism (tmpfiles)" ||
        fail "postinst: /run/organism missing or not group organism"
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
n=$(find "/usr/lib/$multiarch/organism/plugins" -name '*.so' | wc -l)
[ "$n" -gt 0 ] && ok "$n plugins in /usr/lib/$multiarch/organism/plugins" || fail "no plugins installed"
pkg-config --exists organism-plugin && [ "$(pkg-config --variable=plugindir organism-plugin)" = "/usr/lib/$multiarch/organism/plugins" ] &&
        ok "organism-plugin.pc: plugindir /usr/lib/$multiarch/organism/plugins" || fail "organism-plugin.pc"

# 5. check and start. Outside systemd, a copy of the packaged config with agent.dry_run
# on: this machine runs other tests, the packaged instances must not change it.
if /usr/sbin/agentd --check -c /etc/organism/agentd.yaml; then ok "agentd --check /etc/organism/agentd.yaml"; else fail "agentd --check"; fi
if [ -d /run/systemd/system ] && [ "$(ps -p 1 -o comm=)" = systemd ]; then
        if systemctl is-active --quiet agentd.service || systemctl start agentd.service; then
                ok "agentd.service active (systemd)"
        else
                fail "agentd.service"; journalctl -u agentd -n 30 --no-pager
        fi
else
        install -d -m 0700 "$work/etc"
        sed 's/^  dry_run: false/  dry_run: true/' /etc/organism/agentd.yaml >"$work/etc/agentd.yaml"
        chmod 0644 "$work/etc/agentd.yaml"
        /usr/sbin/agentd -c "$work/etc/agentd.yaml" >"$work/agentd.log" 2>&1 &
        agentd_pid=$!
        for _ in $(seq 100); do [ -S /run/organism/agentd.sock ] && break; sleep 0.1; done
        [ -S /run/organism/agentd.sock ] && ok "agentd started (no systemd: in the background, pid $agentd_pid)" ||
                { fail "agentd did not start:"; cat "$work/agentd.log"; }
fi
if /usr/bin/agentctl status; then ok "agentctl status"; else fail "agentctl status"; fi
[ -s /usr/share/man/man5/agentd.yaml.5.gz ] && man --warnings -l /usr/share/man/man5/agentd.yaml.5.gz >/dev/null 2>"$work/man.log" &&
        [ ! -s "$work/man.log" ] && ok "agentd.yaml(5) installed, renders without warnings" || { fail "agentd.yaml(5)"; cat "$work/man.log"; }
if [ -n "$agentd_pid" ]; then
        kill "$agentd_pid"; wait "$agentd_pid" 2>/dev/null; agentd_pid=""
fi

# 6. purge: nothing left of the package but what policy keeps (/var/lib/organism, the
# state an admin may want, is removed by the purge too: see debian/organism.postrm)
files=$(dpkg -L organism organism-dev | sort -u)
if DEBIAN_FRONTEND=noninteractive apt-get purge -y -q organism organism-dev >"$work/purge.log" 2>&1; then
        ok "apt-get purge organism organism-dev"
else
        fail "apt-get purge:"; tail -20 "$work/purge.log"
fi
left=$(while read -r f; do if [ -f "$f" ] || { [ -L "$f" ] && [ ! -d "$f" ]; }; then echo "$f"; fi; done <<<"$files")
for d in /etc/organism /var/lib/organism /run/organism; do [ -e "$d" ] && left+=$'\n'"$d"; done
left=$(sed '/^$/d' <<<"$left")
if [ -z "$left" ]; then ok "nothing left after the purge"; else fail "left after the purge:"; echo "$left"; fi
finish
