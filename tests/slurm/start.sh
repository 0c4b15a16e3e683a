#!/usr/bin/env bash
# Install (only if missing) and start a real single-node Slurm cluster for the
# crackhpc integration tests: munged, MariaDB, slurmdbd, slurmctld, slurmd.
#
# Idempotent: re-running while everything is up is a fast no-op; running it
# after tests/slurm/stop.sh brings the cluster back.  Needs root, no systemd.
#
# Environment knobs (all optional):
#   CRACKHPC_SLURM_DIR      state/spool/log/pid dir    (default /tmp/crackhpc-slurm)
#   CRACKHPC_SLURM_CLUSTER  cluster name               (default crackhpc)
#   CRACKHPC_SLURM_CPUS     CPUs declared for the node (default: nproc)
#   CRACKHPC_SLURM_TIMEOUT  seconds to wait per daemon (default 60)
#
# `start.sh --nodes 2` also starts the two-node cluster of tests/slurm/two_nodes.sh beside this one
# (same munged and slurmdbd; clients reach it with its SLURM_CONF, the last line printed).
set -euo pipefail

case "${1:-} ${2:-}" in
" " | "--nodes 1") NODES=1 ;;
"--nodes 2") NODES=2 ;;
*) echo "usage: $0 [--nodes 1|2]" >&2 && exit 2 ;;
esac

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE=${CRACKHPC_SLURM_DIR:-/tmp/crackhpc-slurm}
CLUSTER=${CRACKHPC_SLURM_CLUSTER:-crackhpc}
CPUS=${CRACKHPC_SLURM_CPUS:-$(nproc)}
TIMEOUT=${CRACKHPC_SLURM_TIMEOUT:-60}
HOST=$(hostname -s)
CONF_DIR=/etc/slurm          # default location: no SLURM_CONF needed by clients
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=crackhpc
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
LOG=$BASE/log
RUN=$BASE/run
export DEBIAN_FRONTEND=noninteractive

log() { echo "[slurm/start] $*" >&2; }
die() {
    echo "[slurm/start] ERROR: $1" >&2
    if [ -n "${2:-}" ] && [ -f "$2" ]; then
        echo "[slurm/start] ---- last lines of $2 ----" >&2
        tail -n 25 "$2" >&2
    fi
    exit 1
}

# wait_for DESCRIPTION LOGFILE COMMAND...: poll COMMAND until it succeeds or TIMEOUT.
wait_for() {
    local what=$1 logfile=$2; shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "$what not ready after ${TIMEOUT}s" "$logfile"
        fi
        sleep 0.5
    done
}

# shellcheck source=pidfiles.sh
. "$(dirname "$0")/pidfiles.sh"

[ "$(id -u)" -eq 0 ] || die "must run as root"

# Serialise concurrent start/stop calls (e.g. several test workers).  Daemons
# are started detached (pidfiles.sh) so they do not keep the lock.
exec 9>"$BASE.lock"
flock -w 600 9 || die "could not lock $BASE.lock"

# --------------------------------------------------------------------------- packages
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt)"
    t0=$SECONDS
    # No init system: keep maintainer scripts from trying to start the services.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    log "packages installed in $((SECONDS - t0))s"
fi

# --------------------------------------------------------------------------- config
install -d -m 0755 "$BASE" "$LOG" "$RUN" "$BASE/state" "$BASE/state/ctld" "$BASE/state/slurmd" "$CONF_DIR"
# Fake "GPU devices" named by gres.conf: character devices with /dev/null's
# numbers.  (Plain files also give gpu:4, but slurmd then rejects them as
# devices and never sets CUDA_VISIBLE_DEVICES in jobs.)
for i in 0 1 2 3; do
    dev=$BASE/gpu$i
    [ -c "$dev" ] && continue
    rm -f "$dev"
    if ! mknod -m 0666 "$dev" c 1 3 2>/dev/null; then
        log "WARNING: mknod failed, using a plain file for $dev (jobs will not get CUDA_VISIBLE_DEVICES)"
        touch "$dev"
    fi
done

mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
MEMORY=$((mem_mb * 90 / 100))           # a bit below the real memory
DEF_MEM_PER_CPU=$((MEMORY / CPUS))
((DEF_MEM_PER_CPU > 1024)) && DEF_MEM_PER_CPU=1024

render() {
    sed -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" \
        -e "s|@MEMORY@|$MEMORY|g" -e "s|@DEF_MEM_PER_CPU@|$DEF_MEM_PER_CPU|g" \
        -e "s|@BASE@|$BASE|g" -e "s|@DB_USER@|$DB_USER|g" -e "s|@DB_PASS@|$DB_PASS|g" "$1"
}
changed=""
# install_conf TEMPLATE DEST MODE: write DEST only if its content changes.
install_conf() {
    local tmp
    tmp=$(mktemp)
    render "$HERE/$1" >"$tmp"
    if ! cmp -s "$tmp" "$2"; then
        install -m "$3" "$tmp" "$2"
        changed="$changed $1"
    fi
    rm -f "$tmp"
}
install_conf slurm.conf.in "$CONF_DIR/slurm.conf" 0644
install_conf gres.conf.in "$CONF_DIR/gres.conf" 0644
install_conf slurmdbd.conf.in "$CONF_DIR/slurmdbd.conf" 0600   # slurmdbd insists on 0600

# A config change while daemons run: restart the affected ones below.
if [ -n "$changed" ]; then
    log "config written to $CONF_DIR:$changed"
    case $changed in *slurmdbd.conf*) stop_pidfile slurmdbd "$RUN/slurmdbd.pid" ;; esac
    case $changed in *slurm.conf* | *gres.conf*)
        stop_pidfile slurmd "$RUN/slurmd.pid"
        stop_pidfile slurmctld "$RUN/slurmctld.pid" ;;
    esac
fi

# --------------------------------------------------------------------------- munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge
install -d -o munge -g munge -m 0700 /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    mungekey -c -f -k /etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! running munged /run/munge/munged.pid; then
    log "starting munged"
    detached runuser -u munge -- /usr/sbin/munged </dev/null >>"$LOG/munged.out" 2>&1 ||
        die "munged failed to start" /var/log/munge/munged.log
fi
munge_ok() { munge -n </dev/null | unmunge; }
wait_for munged /var/log/munge/munged.log munge_ok

# --------------------------------------------------------------------------- mariadb
mysql_up() { mysqladmin --silent ping; }
if ! mysql_up >/dev/null 2>&1; then
    log "starting mariadb (mysqld_safe)"
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
        detached mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$LOG/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed" "$LOG/mariadb-install.log"
    fi
    touch "$LOG/mariadb.log"
    chown mysql:mysql "$LOG/mariadb.log"
    # setsid --fork returns at once; `detached ... &` would leave a shell holding our descriptors
    detached setsid --fork nohup mysqld_safe --skip-syslog --log-error="$LOG/mariadb.log" \
        --bind-address=127.0.0.1 --innodb-lock-wait-timeout=900 \
        </dev/null >>"$LOG/mysqld_safe.out" 2>&1
fi
wait_for mariadb "$LOG/mariadb.log" mysql_up
# A controller that starts without its state numbers jobs from 1 again, while accounting kept from
# an earlier cluster (a machine whose /tmp was wiped but not /var/lib/mysql) holds ended jobs under
# the same ids: this cluster's accounting starts afresh with its state.
if [ ! -e "$BASE/state/ctld/job_state" ] && ! running slurmdbd "$RUN/slurmdbd.pid"; then
    log "fresh controller state: dropping the old accounting database"
    mysql -u root -e "DROP DATABASE IF EXISTS $DB_NAME" || die "could not drop the old accounting database" "$LOG/mariadb.log"
fi
mysql -u root <<EOF || die "could not create the accounting database" "$LOG/mariadb.log"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
EOF

# --------------------------------------------------------------------------- slurmdbd
if ! running slurmdbd "$RUN/slurmdbd.pid"; then
    log "starting slurmdbd"
    detached slurmdbd </dev/null >>"$LOG/slurmdbd.out" 2>&1 || die "slurmdbd failed to start" "$LOG/slurmdbd.log"
fi
wait_for slurmdbd "$LOG/slurmdbd.log" sacctmgr -n show cluster
if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER in accounting"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
if ! sacctmgr -n -P show account format=account | grep -qx "$CLUSTER"; then
    sacctmgr -i add account "$CLUSTER" cluster="$CLUSTER" description=tests organization=crackhpc >/dev/null
fi
if ! sacctmgr -n -P show assoc cluster="$CLUSTER" account="$CLUSTER" user=root format=user | grep -qx root; then
    sacctmgr -i add user root account="$CLUSTER" cluster="$CLUSTER" >/dev/null
fi

# --------------------------------------------------------------------------- slurmctld / slurmd
if ! running slurmctld "$RUN/slurmctld.pid"; then
    log "starting slurmctld"
    detached slurmctld </dev/null >>"$LOG/slurmctld.out" 2>&1 || die "slurmctld failed to start" "$LOG/slurmctld.log"
fi
ctld_up() { scontrol ping | grep -q UP; }
wait_for slurmctld "$LOG/slurmctld.log" ctld_up

if ! running slurmd "$RUN/slurmd.pid"; then
    log "starting slurmd"
    detached slurmd -N "$HOST" </dev/null >>"$LOG/slurmd.out" 2>&1 || die "slurmd failed to start" "$LOG/slurmd.log"
fi

node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1; }
resumed=0
node_ready() {
    local st
    st=$(node_state)
    case $st in
    idle | mixed | allocated | completing) return 0 ;;
    down* | drain* | drained* | fail*)
        # e.g. left DOWN by an earlier unclean stop: slurmd is up, so resume it once.
        if ((resumed == 0)) && running slurmd "$RUN/slurmd.pid"; then
            resumed=1
            scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        fi
        return 1 ;;
    *) return 1 ;;
    esac
}
deadline=$((SECONDS + TIMEOUT))
until node_ready; do
    if ((SECONDS >= deadline)); then
        sinfo -N -l >&2 || true
        scontrol show node "$HOST" 2>/dev/null | grep -i reason >&2 || true
        die "node $HOST not idle after ${TIMEOUT}s (state: $(node_state))" "$LOG/slurmd.log"
    fi
    sleep 0.5
done
sacct_ok() { sacct -n -X -S now-1hours -o JobID; }
wait_for sacct "$LOG/slurmdbd.log" sacct_ok

version=$(sinfo --version | awk '{print $2}')
gres=$(sinfo -h -n "$HOST" -o %G | head -n1)
echo "slurm $version up: cluster=$CLUSTER node=$HOST state=$(node_state) cpus=$CPUS mem=${MEMORY}M gres=$gres partition=debug conf=$CONF_DIR/slurm.conf logs=$LOG"
if ((NODES == 2)); then
    exec 9>&-
    bash "$HERE/two_nodes.sh" up
fi
