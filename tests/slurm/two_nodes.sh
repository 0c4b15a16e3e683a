#!/usr/bin/env bash
# The two-node test cluster: two slurmd, node1 and node2, each in its own network and UTS namespace
# (its own hostname and address), on a bridge to the host, where a second slurmctld runs beside the
# single-node cluster's (port 6827, its own state); munged, slurmdbd and the file system are shared.
#
#   two_nodes.sh up            start it (idempotent; first cleans what a failed run left)
#   two_nodes.sh down          stop it, delete its namespaces, links and /etc/netns files
#   two_nodes.sh fail NODE     the node dies: its link goes down, then every process in it is killed
#   two_nodes.sh revive NODE   the node comes back: link up, slurmd started (ReturnToService=2)
#   two_nodes.sh env           the SLURM_CONF line clients need
#
# `up` needs munged and slurmdbd: tests/slurm/start.sh --nodes 2 starts them, then this.
# Layout (CRACKHPC_SLURM2_NET, default 10.250.27): bridge crackhpc-br (.1, the host, slurmctld),
# node1 = netns crackhpc-node1, veth crackhpc-v1 <-> eth0 .2; node2 = crackhpc-node2, crackhpc-v2, .3.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE=${CRACKHPC_SLURM2_DIR:-/tmp/crackhpc-slurm2}
NET=${CRACKHPC_SLURM2_NET:-10.250.27}
CLUSTER=${CRACKHPC_SLURM2_CLUSTER:-crackhpc2}
TIMEOUT=${CRACKHPC_SLURM_TIMEOUT:-60}
HOST=$(hostname -s)
BRIDGE=crackhpc-br
NODES=(node1 node2)
export SLURM_CONF=$BASE/etc/slurm.conf
LOG=$BASE/log
RUN=$BASE/run

log() { echo "[slurm/two_nodes] $*" >&2; }
die() {
    echo "[slurm/two_nodes] ERROR: $1" >&2
    [ -n "${2:-}" ] && [ -f "$2" ] && tail -n 25 "$2" >&2
    exit 1
}
# shellcheck source=pidfiles.sh
. "$HERE/pidfiles.sh"

ns() { echo "crackhpc-$1"; }
veth() { echo "crackhpc-v${1#node}"; }
addr() { echo "$NET.$((${1#node} + 1))"; }

# ns_pids NODE: the processes in the node's network namespace (`ip netns pids` does not see them
# under every kernel, e.g. gVisor's: compare the namespace files instead).
ns_pids() {
    local want p
    want=$(stat -L -c %i "/run/netns/$(ns "$1")" 2>/dev/null) || return 0
    for p in /proc/[0-9]*; do
        [ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" = "$want" ] && echo "${p#/proc/}"
    done
}

kill_node_processes() {
    local pids
    pids=$(ns_pids "$1" | tr '\n' ' ')
    [ -n "${pids// /}" ] || return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null
    for _ in $(seq 1 20); do
        [ -z "$(ns_pids "$1")" ] && return 0
        sleep 0.25
    done
}

start_slurmd() {
    local node=$1
    running slurmd "$RUN/slurmd-$node.pid" && return 0
    log "starting slurmd on $node ($(addr "$node"))"
    # Its own hostname, and /etc/netns/<ns>/hosts over /etc/hosts, so the nodes' names resolve
    # inside the cluster as a site's DNS would. (Not `ip netns exec`: it remounts /sys, without
    # the cgroup file system slurmd needs.)
    detached nsenter --net="/run/netns/$(ns "$node")" unshare --uts --mount --propagation slave \
        sh -c "mount --bind /etc/netns/$(ns "$node")/hosts /etc/hosts && hostname $node && exec slurmd -N $node" \
        </dev/null >>"$LOG/slurmd-$node.out" 2>&1 || die "slurmd on $node failed to start" "$LOG/slurmd-$node.log"
}

node_state() { sinfo -h -n "$1" -o %T 2>/dev/null | head -n1; }

wait_idle() {
    local node=$1 deadline=$((SECONDS + TIMEOUT)) st resumed=0
    while :; do
        st=$(node_state "$node")
        case $st in
        idle | mixed | allocated | completing) return 0 ;;
        down* | drain* | fail*)
            if ((resumed == 0)) && running slurmd "$RUN/slurmd-$node.pid"; then
                resumed=1
                scontrol update nodename="$node" state=resume >/dev/null 2>&1
            fi ;;
        esac
        ((SECONDS >= deadline)) && die "$node not idle after ${TIMEOUT}s (state: $st)" "$LOG/slurmd-$node.log"
        sleep 0.5
    done
}

down() {
    if running slurmctld "$RUN/slurmctld.pid"; then
        jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
        # shellcheck disable=SC2086
        [ -n "$jobs" ] && log "cancelling jobs: $(echo $jobs)" && scancel $jobs 2>/dev/null
    fi
    for node in "${NODES[@]}"; do
        stop_pidfile slurmd "$RUN/slurmd-$node.pid"
        kill_node_processes "$node" # job steps, and anything a failed run left in the namespace
        ip netns del "$(ns "$node")" 2>/dev/null
        ip link del "$(veth "$node")" 2>/dev/null # not always deleted with its peer's namespace
        rm -rf "/etc/netns/$(ns "$node")"
    done
    stop_pidfile slurmctld "$RUN/slurmctld.pid"
    ip link del "$BRIDGE" 2>/dev/null
    return 0
}

render() {
    sed -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$HOST|g" -e "s|@BASE@|$BASE|g" -e "s|@NET@|$NET|g" \
        -e "s|@MEMORY@|$MEMORY|g" "$HERE/$1"
}

network() {
    ip link show "$BRIDGE" >/dev/null 2>&1 || {
        ip link add "$BRIDGE" type bridge && ip addr add "$NET.1/24" dev "$BRIDGE"
    } || die "cannot create bridge $BRIDGE (needs root and iproute2)"
    ip link set "$BRIDGE" up
    for node in "${NODES[@]}"; do
        local n v
        n=$(ns "$node") v=$(veth "$node")
        install -d "/etc/netns/$n"
        {
            echo "127.0.0.1 localhost"
            echo "$NET.1 $HOST"
            for other in "${NODES[@]}"; do echo "$(addr "$other") $other"; done
        } >"/etc/netns/$n/hosts"
        [ -e "/run/netns/$n" ] && ip link show "$v" >/dev/null 2>&1 && continue
        # Half-built, or its link deleted: the node again from the start, its slurmd too.
        kill_node_processes "$node"
        rm -f "$RUN/slurmd-$node.pid"
        ip netns del "$n" 2>/dev/null
        ip link del "$v" 2>/dev/null
        ip netns add "$n" &&
            ip link add "$v" type veth peer name eth0 netns "$n" &&
            ip link set "$v" master "$BRIDGE" && ip link set "$v" up &&
            ip -n "$n" addr add "$(addr "$node")/24" dev eth0 &&
            ip -n "$n" link set eth0 up && ip -n "$n" link set lo up &&
            ip -n "$n" route add default via "$NET.1" || die "cannot set up the network of $node"
    done
}

up() {
    install -d -m 0755 "$BASE" "$BASE/etc" "$LOG" "$RUN" "$BASE/state/ctld"
    exec 9>"$BASE.lock"
    flock -w 600 9 || die "could not lock $BASE.lock"
    MEMORY=$(($(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) * 45 / 100))
    for node in "${NODES[@]}"; do
        install -d "$BASE/state/$node"
        [ -c "$BASE/gpu-$node" ] || { rm -f "$BASE/gpu-$node"; mknod -m 0666 "$BASE/gpu-$node" c 1 3 || touch "$BASE/gpu-$node"; }
    done
    local changed=""
    for f in slurm gres; do
        render "${f}2.conf.in" >"$BASE/etc/$f.conf.new"
        if cmp -s "$BASE/etc/$f.conf.new" "$BASE/etc/$f.conf"; then rm "$BASE/etc/$f.conf.new"; else
            mv "$BASE/etc/$f.conf.new" "$BASE/etc/$f.conf" && changed=1
        fi
    done
    # A half-built network or daemons of another config: start clean.
    if [ -n "$changed" ] || ! running slurmctld "$RUN/slurmctld.pid" ||
        ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        down
    fi
    network
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "cannot register $CLUSTER with slurmdbd"
    fi
    if ! sacctmgr -n -P show assoc cluster="$CLUSTER" user=root format=user | grep -qx root; then
        sacctmgr -i add account "$CLUSTER" cluster="$CLUSTER" description=tests organization=crackhpc >/dev/null 2>&1
        sacctmgr -i add user root account="$CLUSTER" cluster="$CLUSTER" >/dev/null
    fi
    if ! running slurmctld "$RUN/slurmctld.pid"; then
        log "starting slurmctld ($CLUSTER, port 6827)"
        detached slurmctld </dev/null >>"$LOG/slurmctld.out" 2>&1 || die "slurmctld failed to start" "$LOG/slurmctld.log"
    fi
    local deadline=$((SECONDS + TIMEOUT))
    until scontrol ping 2>/dev/null | grep -q UP; do
        ((SECONDS >= deadline)) && die "slurmctld of $CLUSTER not up after ${TIMEOUT}s" "$LOG/slurmctld.log"
        sleep 0.5
    done
    for node in "${NODES[@]}"; do
        ip link set "$(veth "$node")" up
        start_slurmd "$node"
    done
    for node in "${NODES[@]}"; do wait_idle "$node"; done
    echo "slurm up: cluster=$CLUSTER nodes=node1($(addr node1)),node2($(addr node2)) partition=debug SLURM_CONF=$SLURM_CONF logs=$LOG"
}

fail() {
    [ -e "/run/netns/$(ns "$1")" ] || die "no node $1"
    log "$1 fails: link down, every process in it killed"
    ip link set "$(veth "$1")" down
    kill_node_processes "$1"
    rm -f "$RUN/slurmd-$1.pid"
}

revive() {
    log "$1 comes back"
    ip link set "$(veth "$1")" up
    start_slurmd "$1"
}

[ "$(id -u)" -eq 0 ] || die "must run as root"
case ${1:-} in
up) up ;;
down) down ;;
fail) fail "${2:?node}" ;;
revive) revive "${2:?node}" ;;
env) echo "SLURM_CONF=$SLURM_CONF" ;;
*) die "usage: $0 up|down|fail NODE|revive NODE|env" ;;
esac
