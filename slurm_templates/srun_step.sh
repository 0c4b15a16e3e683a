# srun in Slurm 22.05 and later does not hand the job's --cpus-per-task on to its tasks by itself.
export SRUN_CPUS_PER_TASK=$${SLURM_CPUS_PER_TASK:-1}

# USR2 requeues the job: Slurm sends it ${signal_lead_s} s before the time limit (--signal=B:USR2@...),
# and `scancel --signal=USR2 --batch JOBID` sends it by hand. The requeued job runs this script
# again, and the worker resumes after the last epoch saved in the run folder's checkpoint.pt.
requeue() {
    if [ "$${SLURM_RESTART_COUNT:-0}" -lt ${max_requeues} ]; then
        echo "crackhpc: USR2: requeueing job $$SLURM_JOB_ID" >&2
        scontrol requeue "$$SLURM_JOB_ID"
    else
        echo "crackhpc: USR2: job $$SLURM_JOB_ID was requeued ${max_requeues} times already, not again" >&2
    fi
}

# Runs a command (the srun step) so that USR2 can requeue the job while it runs: bash runs a
# trap only between commands, so the step goes to the background, and since `wait` returns when
# the trap runs, it is repeated until the step has ended. Returns the step's exit status.
run_requeueable() {
    trap requeue USR2
    "$$@" &
    local pid=$$! status
    while wait "$$pid"; status=$$?; kill -0 "$$pid" 2>/dev/null; do :; done
    return "$$status"
}
