#!/usr/bin/env bash
# Stop the cluster that .ci/slurm/start.sh started: cancel its jobs, stop exactly the daemons
# named in its PID files, put back any /etc/slurm file it replaced, remove its state folder.
# Safe to run twice or when nothing was started.
#
# Settings (environment):
#   CI_SLURM_STATE      state folder used by start.sh [/tmp/pancreas-mtl-slurm]
#   CI_SLURM_KEEP_LOGS  if set, a folder to copy the daemons' logs into before cleaning up
set -uo pipefail

state=${CI_SLURM_STATE:-/tmp/pancreas-mtl-slurm}
marker="Written by .ci/slurm/start.sh"

log() { echo "[slurm-ci] $*" >&2; }

alive() {  # alive NAME: the process in NAME's PID file runs, and is that program
    local pidfile=$state/pids/$1.pid pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    # A zombie still has a /proc entry until someone reaps it; it counts as stopped.
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] &&
        [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}

if [[ ! -d $state ]]; then
    log "nothing to stop ($state does not exist)"
    exit 0
fi

if alive slurmctld; then
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
        log "cancelling jobs $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 40); do
            [[ -z $(squeue -h -t all -o %i -t R,CG,PD 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
fi

for d in slurmd slurmctld slurmdbd mariadbd munged; do
    alive "$d" || continue
    pid=$(<"$state/pids/$d.pid")
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 60); do
        alive "$d" || break
        sleep 0.5
    done
    if alive "$d"; then
        log "$d (pid $pid) ignored SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null
        sleep 0.5
    fi
    log "stopped $d (pid $pid)"
done

if [[ -s $state/etc-files ]]; then
    while read -r f; do
        [[ -e $f ]] && grep -q "$marker" "$f" && rm -f "$f"
        backup=$state/etc-backup/$(basename "$f")
        [[ -e $backup ]] && cp -p "$backup" "$f" && log "restored $f"
    done <"$state/etc-files"
fi

if [[ -n ${CI_SLURM_KEEP_LOGS:-} ]]; then
    mkdir -p "$CI_SLURM_KEEP_LOGS" && cp -r "$state/log/." "$CI_SLURM_KEEP_LOGS/"
fi
rm -rf "$state"
log "cleaned up $state"
