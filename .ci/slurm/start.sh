#!/usr/bin/env bash
# Start a throwaway single-node Slurm cluster on this machine (munged, MariaDB, slurmdbd,
# slurmctld, slurmd; one GPU advertised as a gres), as root and without systemd.
# Idempotent: a running cluster started by this script is left as it is; a half-started one
# is stopped and started afresh. .ci/slurm/stop.sh stops exactly what this script started.
#
# Settings (environment):
#   CI_SLURM_STATE      state folder: PID files, logs, sockets, databases [/tmp/pancreas-mtl-slurm]
#   CI_SLURM_ACCOUNT    account created for the current user [pancreas_ci]
#   CI_SLURM_PARTITION  the one (default) partition [debug]
#   CI_SLURM_CPUS       CPUs the node advertises [16]; more than the machine has is fine
#   CI_SLURM_MEM_MB     memory the node advertises [64000]; not enforced, jobs only queue by it
#   CI_SLURM_DB_PORT    MariaDB TCP port on 127.0.0.1 [3307]
# Slurm's own ports keep their defaults (6817-6819); the config must sit at /etc/slurm because
# the executor plugin's job steps drop SLURM_CONF along with every other SLURM_* variable.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state=${CI_SLURM_STATE:-/tmp/pancreas-mtl-slurm}
account=${CI_SLURM_ACCOUNT:-pancreas_ci}
partition=${CI_SLURM_PARTITION:-debug}
cpus=${CI_SLURM_CPUS:-16}
mem_mb=${CI_SLURM_MEM_MB:-64000}
db_port=${CI_SLURM_DB_PORT:-3307}
cluster=pancreas-ci
node=$(hostname -s)
etc=/etc/slurm
marker="Written by .ci/slurm/start.sh"
daemons=(munged mariadbd slurmdbd slurmctld slurmd)
packages=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)

log() { echo "[slurm-ci] $*" >&2; }

die() {
    log "ERROR: $*"
    for f in "$state"/log/*.log "$state"/log/*.out; do
        [[ -s $f ]] && { echo "--- $f (tail)" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}

alive() {  # alive NAME: the process in NAME's PID file runs, and is that program
    local pidfile=$state/pids/$1.pid pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    # A zombie still has a /proc entry until someone reaps it; it counts as stopped.
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] &&
        [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}

node_state() { sinfo -h -n "$node" -o %t 2>/dev/null | head -n1; }

wait_for() {  # wait_for SECONDS WHAT DAEMON CMD...: poll CMD until it succeeds
    local deadline=$((SECONDS + $1)) what=$2 daemon=$3
    shift 3
    until "$@" >/dev/null 2>&1; do
        [[ -z $daemon ]] || alive "$daemon" || die "$daemon exited while waiting for $what"
        ((SECONDS < deadline)) || die "timed out waiting for $what"
        sleep 0.5
    done
}

launch() {  # launch NAME CMD...: run a foreground daemon detached, record its PID
    local name=$1
    shift
    # Without job control a background job is not a group leader, so setsid execs in place
    # and $! is the daemon itself.
    setsid "$@" >>"$state/log/$name.out" 2>&1 </dev/null &
    echo $! >"$state/pids/$name.pid"
    sleep 0.2
    alive "$name" || die "$name did not start"
    log "started $name (pid $(<"$state/pids/$name.pid")) at $((SECONDS - started)) s"
}

render() {  # render TEMPLATE DEST MODE: fill placeholders; keep a foreign DEST for stop.sh
    local dest=$2
    if [[ -e $dest ]] && ! grep -q "$marker" "$dest"; then
        mkdir -p "$state/etc-backup"
        [[ -e $state/etc-backup/$(basename "$dest") ]] || cp -p "$dest" "$state/etc-backup/"
    fi
    sed -e "s|@STATE@|$state|g" -e "s|@NODE@|$node|g" -e "s|@CLUSTER@|$cluster|g" \
        -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem_mb|g" -e "s|@PARTITION@|$partition|g" \
        -e "s|@DB_PORT@|$db_port|g" -e "s|@DB_PASS@|$db_pass|g" \
        "$here/$1" >"$dest.tmp"
    chmod "$3" "$dest.tmp"
    mv "$dest.tmp" "$dest"
    grep -qxF "$dest" "$state/etc-files" 2>/dev/null || echo "$dest" >>"$state/etc-files"
}

ready() {
    [[ $(node_state) == idle* || $(node_state) == mix* ]] &&
        sacctmgr -n -P show assoc account="$account" user="$(id -un)" format=account | grep -qx "$account"
}

started=$SECONDS
((EUID == 0)) || { log "ERROR: run as root: the daemons and /etc/slurm need it"; exit 1; }

if [[ -d $state ]]; then
    all_alive=1
    for d in "${daemons[@]}"; do alive "$d" || all_alive=0; done
    if ((all_alive)) && ready; then
        log "cluster already running (state in $state)"
        exit 0
    fi
    log "stale or partial cluster in $state; stopping it first"
    CI_SLURM_STATE=$state bash "$here/stop.sh"
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$state"/{pids,log,run,munge,mysql,slurmctld,slurmd}
# munged refuses socket and key folders that others can write to, and wants 0711 here.
chmod 0755 "$state" "$state/log" "$state/run"
chmod 0711 "$state/munge"
mkdir -p "$etc"

mungekey --create --keyfile="$state/munge/munge.key" --force
chmod 0600 "$state/munge/munge.key"
launch munged munged --foreground --force \
    --socket="$state/munge/munge.socket.2" --key-file="$state/munge/munge.key" \
    --pid-file="$state/run/munged.pid" --log-file="$state/log/munged.log" \
    --seed-file="$state/munge/munged.seed"
wait_for 20 "munge" munged bash -c \
    "munge -n -S '$state/munge/munge.socket.2' | unmunge -S '$state/munge/munge.socket.2'"

mariadb-install-db --no-defaults --user=root --datadir="$state/mysql" \
    --auth-root-authentication-method=socket --skip-test-db >"$state/log/mariadb-install.out" 2>&1 ||
    die "mariadb-install-db failed"
launch mariadbd mariadbd --no-defaults --user=root --datadir="$state/mysql" \
    --socket="$state/run/mysqld.sock" --port="$db_port" --bind-address=127.0.0.1 \
    --pid-file="$state/run/mariadbd.pid" --log-error="$state/log/mariadbd.log" \
    --innodb-buffer-pool-size=64M
wait_for 60 "MariaDB" mariadbd mariadb-admin --no-defaults --socket="$state/run/mysqld.sock" ping
db_pass=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
mariadb --no-defaults --socket="$state/run/mysqld.sock" -u root <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$db_pass';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$db_pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

render slurm.conf.in "$etc/slurm.conf" 0644
render gres.conf.in "$etc/gres.conf" 0644
# slurmdbd insists on a private config owned by SlurmUser.
render slurmdbd.conf.in "$etc/slurmdbd.conf" 0600

launch slurmdbd slurmdbd -D
wait_for 60 "slurmdbd" slurmdbd sacctmgr -n show cluster
sacctmgr -n -P show cluster format=cluster | grep -qx "$cluster" ||
    sacctmgr -i add cluster "$cluster" >/dev/null

launch slurmctld slurmctld -D -f "$etc/slurm.conf"
wait_for 60 "slurmctld" slurmctld scontrol ping
launch slurmd slurmd -D -f "$etc/slurm.conf" -N "$node"

sacctmgr -i add account "$account" cluster="$cluster" \
    description="pancreas-mtl CI" organization=ci >/dev/null || true
sacctmgr -i add user "$(id -un)" account="$account" cluster="$cluster" >/dev/null || true
sacctmgr -i modify user "$(id -un)" set defaultaccount="$account" >/dev/null || true

wait_for 60 "node $node idle and the account known" slurmd ready
# The association reaches slurmctld a moment after sacctmgr shows it; this also proves the
# GPU gres is schedulable.
wait_for 60 "a GPU job to be accepted" slurmctld \
    sbatch --test-only -A "$account" -p "$partition" --gpus=1 -t 1 --wrap true

log "cluster $cluster up in $((SECONDS - started)) s: node $node, partition $partition," \
    "account $account, state in $state"
sinfo -N -o "%N %t %c %m %G" >&2
