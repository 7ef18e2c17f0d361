#!/usr/bin/env bash
# Integration under a real systemd: the .deb installed in a booted Debian
# container (systemd-nspawn -b), driven from the host.
#
#   tests/integration/run.sh PATH/TO/edge-agent.deb
#
# The debootstrap tree is cached under $EDGE_AGENT_CI_CACHE (default
# /var/cache/edge-agent-ci) by a key of release + package list; each run
# boots a fresh copy of it. Needs root, debootstrap and systemd-container.
# Exit 0: every step passed; 1: a step failed; 3: this machine cannot run it
# (the reason is printed).
set -euo pipefail

DEB=$(realpath "${1:?usage: run.sh PATH/TO/edge-agent.deb}")
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
RELEASE=bookworm
MIRROR=${EDGE_AGENT_CI_MIRROR:-http://deb.debian.org/debian}
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,procps
CACHE=${EDGE_AGENT_CI_CACHE:-/var/cache/edge-agent-ci}
KEY=$(printf '%s %s %s' "$RELEASE" minbase "$PACKAGES" | sha256sum | cut -c1-16)
BASE=$CACHE/rootfs-$RELEASE-$KEY
STARTED=$(date +%s)

step() { printf '\n=== [%3ss] %s\n' "$(($(date +%s) - STARTED))" "$*"; }
fail() { echo "integration: FAILED: $*" >&2; exit 1; }
unsupported() { echo "integration: CANNOT RUN on this machine: $*" >&2; exit 3; }

# ------------------------------------------------------------ preconditions
[ "$(id -u)" = 0 ] || unsupported "needs root (debootstrap, systemd-nspawn)"
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null; } || unsupported "cannot install ${missing[*]}"
fi
[ -f "$DEB" ] || fail "$DEB: no such file"

# ------------------------------------------------------------ cached tree
if [ ! -f "$BASE/.complete" ]; then
    step "debootstrap $RELEASE (+ $PACKAGES) into $BASE (cached for later runs)"
    rm -rf "$BASE" "$BASE.tmp"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase --include="$PACKAGES" "$RELEASE" "$BASE.tmp" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1 || { tail -n 20 "$CACHE/debootstrap.log"; fail "debootstrap"; }
    # No getty on the console, no network configuration: the container
    # shares the host's network and is driven with nsenter.
    rm -f "$BASE.tmp/etc/machine-id" && : >"$BASE.tmp/etc/machine-id"
    mv "$BASE.tmp" "$BASE"
    touch "$BASE/.complete"
else
    step "reusing cached tree $BASE"
fi

RUN=$(mktemp -d /var/tmp/edge-agent-ci.XXXXXX)
ROOT=$RUN/root
SHARE=$RUN/share
MACHINE=edge-ci-$$
NSPAWN_PID=
cleanup() {
    local code=$?
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill -TERM "$NSPAWN_PID" 2>/dev/null || true  # nspawn halts the container
        for _ in $(seq 1 50); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$NSPAWN_PID" 2>/dev/null || true
    fi
    if [ $code -ne 0 ] && [ -f "$RUN/console.log" ]; then
        echo "--- container console (last 40 lines)"; tail -n 40 "$RUN/console.log"
    fi
    rm -rf "$RUN"
    echo "integration: total $(($(date +%s) - STARTED)) s"
}
trap cleanup EXIT

step "copying the tree and booting it: systemd-nspawn -b -M $MACHINE"
cp -a "$BASE" "$ROOT"
mkdir -p "$SHARE"
cp "$DEB" "$SHARE/edge-agent.deb"
# --register=no/--keep-unit: the host needs no systemd-machined (and no
# systemd as PID 1); the container shares the host network, so the
# coordinator below dials 127.0.0.1.
systemd-nspawn -b -D "$ROOT" -M "$MACHINE" --register=no --keep-unit --console=pipe \
    --bind-ro="$SHARE:/mnt/ci" >"$RUN/console.log" 2>&1 </dev/null &
NSPAWN_PID=$!
LEADER=
for _ in $(seq 1 100); do
    LEADER=$(pgrep -P "$NSPAWN_PID" -x systemd || true)
    [ -n "$LEADER" ] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || unsupported "systemd-nspawn exited at once: $(tail -n 5 "$RUN/console.log")"
    sleep 0.1
done
[ -n "$LEADER" ] || unsupported "no systemd inside the container: $(tail -n 5 "$RUN/console.log")"
C() { nsenter -t "$LEADER" -a -- "$@"; }
for _ in $(seq 1 120); do
    state=$(C systemctl is-system-running 2>/dev/null || true)
    case "$state" in running|degraded) break ;; esac
    sleep 0.5
done
[ "$state" = running ] || [ "$state" = degraded ] || unsupported "container did not boot (state: ${state:-none})"
echo "container systemd is $state"

unit_prop() { C systemctl show -P "$1" edge-agent.service; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq 1 $((seconds * 4))); do "$@" && return 0; sleep 0.25; done
    C journalctl -u edge-agent --no-pager -n 30 || true
    fail "$what (waited $seconds s)"
}

# ------------------------------------------------------------ install
step "dpkg -i: user, directories, venv from the shipped wheels, unit enabled but not started"
C dpkg -i /mnt/ci/edge-agent.deb >"$RUN/dpkg.log" 2>&1 || { cat "$RUN/dpkg.log"; fail "dpkg -i"; }
grep -q "enabled but not started" "$RUN/dpkg.log" || { cat "$RUN/dpkg.log"; fail "postinst should refuse to start an unconfigured agent"; }
C getent passwd edge-agent >/dev/null || fail "no system user edge-agent"
[ "$(C systemctl is-enabled edge-agent.service)" = enabled ] || fail "unit not enabled"
[ "$(C systemctl is-active edge-agent.service || true)" = inactive ] || fail "unit started before configuration"
C edge-agent --version

# ------------------------------------------------------------ configure
step "configuring: certificates, identity key, a dataset, agent.toml, policy.toml"
free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
METRICS_PORT=$(free_port)
PKI=$RUN/pki
"$PYTHON" -m agent dev-certs --out "$PKI" >/dev/null
C install -d -m 0750 -g edge-agent /etc/edge-agent/tls
for f in agent.crt ca.crt; do cp "$PKI/$f" "$ROOT/etc/edge-agent/tls/$f"; done
cp "$PKI/agent.key" "$ROOT/etc/edge-agent/tls/agent.key"
C chown root:edge-agent /etc/edge-agent/tls/agent.crt /etc/edge-agent/tls/ca.crt
C chown edge-agent:edge-agent /etc/edge-agent/tls/agent.key
C chmod 0600 /etc/edge-agent/tls/agent.key
C runuser -u edge-agent -- edge-agent keys generate --out /var/lib/edge-agent/agent-identity.key >/dev/null
mkdir -p "$ROOT/srv/research"
printf 'age,outcome,patient_id\n61,1,p1\n54,0,p2\n47,1,p3\n' >"$ROOT/srv/research/cohort.csv"
cat >"$ROOT/etc/edge-agent/agent.toml" <<EOF
[agent]
id = "hospital-ci"
state_dir = "/var/lib/edge-agent"
[identity]
key_file = "/var/lib/edge-agent/agent-identity.key"
[server]
listen = "127.0.0.1:$PORT"
grace_seconds = 5
[tls]
cert_file = "/etc/edge-agent/tls/agent.crt"
key_file = "/etc/edge-agent/tls/agent.key"
client_ca_file = "/etc/edge-agent/tls/ca.crt"
[governance]
policy_file = "/etc/edge-agent/policy.toml"
[metrics]
listen = "127.0.0.1:$METRICS_PORT"
[[datasets]]
id = "cohort"
path = "/srv/research/cohort.csv"
format = "csv"
columns = ["age", "outcome"]
privacy_unit = "patient_id"
EOF
policy() {  # policy DATASET-GRANTED
    cat <<EOF
[[coordinators]]
identity = "urn:edge-agent:coordinator:dev"
datasets = ["$1"]
task_kinds = ["dp_evaluate"]
[[datasets]]
id = "*"
epsilon_budget = 5.0
forbidden_columns = ["patient_id"]
EOF
}
policy cohort >"$ROOT/etc/edge-agent/policy.toml"
# As an operator does once the key exists: the pin lives in /etc, outside the state directory.
C edge-agent keys pin --config /etc/edge-agent/agent.toml >/dev/null || fail "keys pin"
# The shipped WatchdogSec=30s would make the freeze test wait ~35 s; the
# mechanism is the same with a shorter period.
mkdir -p "$ROOT/etc/systemd/system/edge-agent.service.d"
printf '[Service]\nWatchdogSec=6s\nRestartSec=1s\n' >"$ROOT/etc/systemd/system/edge-agent.service.d/ci.conf"
C systemctl daemon-reload
C runuser -u edge-agent -- edge-agent doctor --config /etc/edge-agent/agent.toml || fail "doctor"

# ------------------------------------------------------------ start
step "systemctl start: active (running) only after READY"
C systemctl start edge-agent.service || fail "systemctl start"
[ "$(unit_prop ActiveState)/$(unit_prop SubState)" = active/running ] || fail "not active (running)"
status=$(unit_prop StatusText)
echo "StatusText: $status"
case "$status" in "serving on port $PORT"*) ;; *) fail "READY status: $status" ;; esac
C systemctl status edge-agent.service --no-pager -n 0 >"$RUN/status.txt" || true
head -n 5 "$RUN/status.txt"

step "coordinator on the host: GetInfo and health over mutual TLS"
seen=$(cd "$REPO" && "$PYTHON" tests/integration/coordinator.py "127.0.0.1:$PORT" "$PKI") || fail "coordinator calls"
echo "coordinator saw: $seen"
[[ $seen == *'"agent_id": "hospital-ci"'* && $seen == *'"health": "SERVING"'* ]] || fail "GetInfo/health"
[[ $seen == *'"datasets": ["cohort"]'* ]] || fail "dataset not visible under the first policy"
metrics=$("$PYTHON" -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$METRICS_PORT/metrics', timeout=10).read().decode())")
grep -qE '^edge_agent_rpcs_total\{code="OK",method="/edge_agent.v1.Agent/GetInfo"\} [1-9]' <<<"$metrics" \
    || fail "GetInfo not counted on the metrics listener"
echo "metrics listener on 127.0.0.1:$METRICS_PORT counts the calls"

# ------------------------------------------------------------ reload
step "systemctl reload: the new policy applies without a restart"
pid_before=$(unit_prop MainPID)
policy nothing-granted >"$ROOT/etc/edge-agent/policy.toml"
C systemctl reload edge-agent.service || fail "systemctl reload"
reloaded() { [[ $(cd "$REPO" && "$PYTHON" tests/integration/coordinator.py "127.0.0.1:$PORT" "$PKI") == *'"datasets": []'* ]]; }
wait_for 15 "new policy in force after reload" reloaded
[ "$(unit_prop MainPID)" = "$pid_before" ] || fail "reload restarted the process"
echo "StatusText: $(unit_prop StatusText)"
echo "policy.toml reloaded by SIGHUP; the coordinator no longer sees the dataset"

# ------------------------------------------------------------ watchdog
step "SIGSTOP the agent: the watchdog kills and restarts it"
frozen=$(unit_prop MainPID)
C kill -STOP "$frozen"
restarted() {
    local pid; pid=$(unit_prop MainPID)
    [ "$pid" != 0 ] && [ "$pid" != "$frozen" ] && [ "$(unit_prop SubState)" = running ]
}
wait_for 60 "restart after a watchdog timeout" restarted
# Read whole, then searched: `journalctl | grep -q` fails under pipefail when
# grep exits at the first match and journalctl gets SIGPIPE.
journal=$(C journalctl -u edge-agent --no-pager)
grep -q "Watchdog timeout" <<<"$journal" || fail "no watchdog timeout in the journal"
echo "NRestarts=$(unit_prop NRestarts); new MainPID $(unit_prop MainPID)"
seen=$(cd "$REPO" && "$PYTHON" tests/integration/coordinator.py "127.0.0.1:$PORT" "$PKI") || fail "calls after restart"
[[ $seen == *'"health": "SERVING"'* ]] || fail "health after restart"

# ------------------------------------------------------------ stop
step "systemctl stop: drains and exits 0"
C systemctl stop edge-agent.service
[ "$(unit_prop Result)" = success ] || fail "stop result: $(unit_prop Result)"
[ "$(unit_prop ExecMainStatus)" = 0 ] || fail "exit status $(unit_prop ExecMainStatus)"
journal=$(C journalctl -u edge-agent --no-pager -o cat)
grep -q '"event": "server.stopping"' <<<"$journal" || fail "no drain in the log"
grep -q '"event": "agent.exited"' <<<"$journal" || fail "no clean exit in the log"
echo "drained (server.stopping ... agent.exited), exit status 0"
verified=$(C edge-agent audit verify --config /etc/edge-agent/agent.toml) || { echo "$verified"; fail "audit verify"; }
grep -q "the pinned key" <<<"$verified" || fail "audit verify did not check against the pinned key: $verified"
echo "audit log intact, verified against the pinned key"

# ------------------------------------------------------------ purge
step "dpkg --purge: user, files, state and units removed"
C dpkg --purge edge-agent >"$RUN/purge.log" 2>&1 || { cat "$RUN/purge.log"; fail "dpkg --purge"; }
! C getent passwd edge-agent >/dev/null || fail "user edge-agent left behind"
! C getent group edge-agent >/dev/null || fail "group edge-agent left behind"
for path in /var/lib/edge-agent /var/log/edge-agent /etc/edge-agent /usr/lib/edge-agent /usr/bin/edge-agent \
    /lib/systemd/system/edge-agent.service /etc/systemd/system/multi-user.target.wants/edge-agent.service; do
    [ ! -e "$ROOT$path" ] || fail "$path left behind"
done
rm -rf "$ROOT/etc/systemd/system/edge-agent.service.d"  # the test's own drop-in
C systemctl daemon-reload
[ "$(C systemctl show -P LoadState edge-agent.service)" = not-found ] || fail "unit still known to systemd"

step "all steps passed"
echo "integration: PASSED in $(($(date +%s) - STARTED)) s"
