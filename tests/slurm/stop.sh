#!/usr/bin/env bash
# Stop the test clusters started by tests/slurm/start.sh: the two-node one (its jobs, daemons,
# namespaces and links, tests/slurm/two_nodes.sh down), then the single-node one's jobs, slurmd,
# slurmctld, slurmdbd, MariaDB and munged.
# Idempotent: anything not running is skipped.  State (job ids, accounting
# database) is kept, so start.sh brings back the same cluster.
set -uo pipefail

BASE=${CRACKHPC_SLURM_DIR:-/tmp/crackhpc-slurm}
RUN=$BASE/run

log() { echo "[slurm/stop] $*" >&2; }

# shellcheck source=pidfiles.sh
. "$(dirname "$0")/pidfiles.sh"

if [ "$(id -u)" -ne 0 ]; then
    echo "[slurm/stop] ERROR: must run as root" >&2
    exit 1
fi
bash "$(dirname "$0")/two_nodes.sh" down

exec 9>"$BASE.lock"
flock -w 600 9 || log "WARNING: could not lock $BASE.lock, going on anyway"

# --------------------------------------------------------------------------- jobs
if running slurmctld "$RUN/slurmctld.pid"; then
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
    if [ -n "$jobs" ]; then
        log "cancelling jobs: $(echo $jobs)"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 1 40); do
            [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

# --------------------------------------------------------------------------- slurm
stop_pidfile slurmd "$RUN/slurmd.pid"
stop_pidfile slurmctld "$RUN/slurmctld.pid"
stop_pidfile slurmdbd "$RUN/slurmdbd.pid"

# --------------------------------------------------------------------------- mariadb
if command -v mysqladmin >/dev/null && mysqladmin --silent ping >/dev/null 2>&1; then
    log "stopping mariadb"
    mysqladmin shutdown 2>/dev/null
    for _ in $(seq 1 60); do
        mysqladmin --silent ping >/dev/null 2>&1 || break
        sleep 0.5
    done
    # mysqld_safe exits on its own once mysqld has shut down cleanly.
    for _ in $(seq 1 20); do
        [ -e /run/mysqld/mysqld.pid ] || break
        sleep 0.5
    done
fi

# --------------------------------------------------------------------------- munge
stop_pidfile munged /run/munge/munged.pid

log "stopped"
