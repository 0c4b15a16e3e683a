#!/usr/bin/env bash
# Smoke test for the cluster started by tests/slurm/start.sh (about 30 s).
# Exercises what crackhpc/submitit rely on; exits non-zero on the first failure.
set -euo pipefail

HOST=$(hostname -s)
WORK=$(mktemp -d /tmp/crackhpc-slurm-smoke.XXXXXX)
cd "$WORK"
trap 'scancel --name=crackhpc-smoke >/dev/null 2>&1 || true' EXIT
SB=(sbatch --parsable --job-name=crackhpc-smoke)

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

# wait_state JOBID WANT [SECONDS]: wait until sacct shows WANT for the job (all array tasks).
wait_state() {
    local st=""
    for _ in $(seq 1 $((${3:-60} * 2))); do
        st=$(sacct -j "$1" -n -X -o State | awk '{print $1}' | sort -u | tr '\n' ' ')
        [ "$st" = "$2 " ] && return 0
        sleep 0.5
    done
    fail "job $1: sacct says '$st', expected $2"
}
wait_file() { # FILE PATTERN [SECONDS]
    for _ in $(seq 1 $((${3:-30} * 2))); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.5
    done
    fail "'$2' not found in $1: $(cat "$1" 2>/dev/null)"
}

line=$(sinfo -h -n "$HOST" -o '%T %G')
[[ $line == "idle gpu:4"* || $line == "mixed gpu:4"* ]] || fail "sinfo: $line"
ok "sinfo: $line"

j=$("${SB[@]}" -o hostname.out --wrap hostname)
wait_state "$j" COMPLETED
ok "sbatch --wrap hostname -> COMPLETED, output $(cat hostname.out)"

j=$("${SB[@]}" --gpus-per-node=1 -o gpu.out --wrap 'echo CVD=$CUDA_VISIBLE_DEVICES')
wait_state "$j" COMPLETED
grep -q '^CVD=[0-3]$' gpu.out || fail "gpu job output: $(cat gpu.out)"
ok "--gpus-per-node=1 -> $(cat gpu.out)"

n=$(srun --job-name=crackhpc-smoke -N1 -n2 hostname | wc -l)
[ "$n" -eq 2 ] || fail "srun -N1 -n2 printed $n lines"
ok "srun -N1 -n2 hostname -> 2 lines"

j=$("${SB[@]}" --array=0-3%2 -o 'arr_%a.out' --wrap 'sleep 2')
wait_state "$j" COMPLETED
ok "array 0-3%2 -> 4 x COMPLETED"

cat >trap.sh <<'EOF'
#!/bin/bash
trap 'echo got-USR2; exit 0' USR2
echo started
sleep 300 & wait
EOF
j=$("${SB[@]}" --signal=USR2@60 --time=2 -o trap.out trap.sh)
wait_file trap.out started
scancel --signal=USR2 --batch "$j"
wait_file trap.out got-USR2
wait_state "$j" COMPLETED
ok "scancel --signal=USR2 --batch reached the batch script"

cat >step.sh <<'EOF'
#!/bin/bash
srun python3 -c '
import signal, sys, time
signal.signal(signal.SIGUSR2, lambda *a: (print("step-got-USR2", flush=True), sys.exit(0)))
print("step-started", flush=True)
time.sleep(300)
'
EOF
j=$("${SB[@]}" -o step.out step.sh)
wait_file step.out step-started
scancel --signal=USR2 "$j"          # what submitit's _interrupt() does
wait_file step.out step-got-USR2
wait_state "$j" COMPLETED
ok "scancel --signal=USR2 reached the srun step"

j=$("${SB[@]}" --requeue -o rq.out --open-mode=append \
    --wrap 'echo run-${SLURM_RESTART_COUNT:-0}; sleep 300')
wait_file rq.out run-0
scontrol requeue "$j"
wait_file rq.out run-1 60
scancel "$j"
ok "scontrol requeue -> job restarted (SLURM_RESTART_COUNT=1)"

rm -rf "$WORK"
echo "smoke test passed"
