#!/usr/bin/env bash
# install.sh — on a fresh Debian 12 (or Proxmox VE) machine, as root: installs the
# build dependencies, builds, installs agentd, agentctl and the plugins under
# /usr/local, puts the example config at /etc/organism/agentd.yaml (never over an
# existing one), checks it, and starts agentd (embedded mode: internal bus, sqlite,
# no NATS). Under systemd it is the agentd.service unit; without systemd (a container)
# agentd runs in the background with its log in /var/log/organism/agentd.log.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo ./scripts/install.sh)" >&2; exit 1; }

./scripts/deps.sh
[ -d build-release ] || meson setup build-release --prefix=/usr/local --buildtype=release -Dtests=false
ninja -C build-release
meson install -C build-release --quiet

getent group organism >/dev/null || groupadd --system organism
install -d -m 0755 /etc/organism
[ -f /etc/organism/agentd.yaml ] || install -m 0644 /usr/local/share/organism/agentd.yaml /etc/organism/agentd.yaml
install -d -m 0755 -g organism /run/organism
install -d -m 0750 /var/lib/organism
/usr/local/sbin/agentd --check -c /etc/organism/agentd.yaml

if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable --now agentd.service
        systemctl reload-or-restart agentd.service
        echo "agentd runs under systemd: systemctl status agentd; journalctl -u agentd"
else
        install -d -m 0750 /var/log/organism
        if [ -f /run/organism/agentd.pid ] && kill -0 "$(cat /run/organism/agentd.pid)" 2>/dev/null; then
                kill "$(cat /run/organism/agentd.pid)"
                while kill -0 "$(cat /run/organism/agentd.pid)" 2>/dev/null; do sleep 0.1; done
        fi
        nohup /usr/local/sbin/agentd -c /etc/organism/agentd.yaml >>/var/log/organism/agentd.log 2>&1 &
        echo $! >/run/organism/agentd.pid
        for _ in $(seq 100); do [ -S /run/organism/agentd.sock ] && break; sleep 0.1; done
        echo "agentd runs in the background (no systemd here), pid $(cat /run/organism/agentd.pid), log /var/log/organism/agentd.log"
fi
/usr/local/bin/agentctl status
/usr/local/bin/agentctl plugin list
