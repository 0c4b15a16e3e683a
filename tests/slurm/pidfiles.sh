# Shared by start.sh and stop.sh (sourced; both define log()): daemons tracked by pid file.

# running NAME PIDFILE: true if the pid in PIDFILE is alive and is NAME.
running() {
    local pid
    pid=$(cat "$2" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

# wait_gone PID SECONDS: wait for PID to exit; true if it did.
wait_gone() {
    local i
    for ((i = 0; i < $2 * 2; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.5
    done
    return 1
}

# stop_pidfile NAME PIDFILE: TERM the daemon, KILL it if it lingers.
stop_pidfile() {
    local pid
    running "$1" "$2" || return 0
    pid=$(cat "$2")
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    if ! wait_gone "$pid" 30; then
        log "$1 (pid $pid) ignored SIGTERM, killing it"
        kill -KILL "$pid" 2>/dev/null
        wait_gone "$pid" 5
    fi
    rm -f "$2"
}

# detached CMD...: run CMD with no open descriptor but stdin, stdout and stderr. A daemon it starts
# must not keep a lock its caller holds: the script's own (fd 9), or one taken around the script
# (`flock /tmp/crackhpc-slurm-tests.lock make test`), which the daemon would hold until it stops.
detached() {
    (
        for fd in /proc/$BASHPID/fd/*; do
            fd=${fd##*/}
            if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        exec "$@"
    )
}
