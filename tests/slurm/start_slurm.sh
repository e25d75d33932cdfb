#!/usr/bin/env bash
# start_slurm.sh - a real single-node SLURM "cluster" (with accounting) for the workflow's SLURM test,
# inside a root container without systemd (what it starts and why, and the SLURM plugin's pitfalls it works
# around: docs/architecture.md, "Devices, processes and the cluster"); tested on Debian 12 bookworm,
# Slurm 22.05.8, munge 0.5.15, MariaDB 10.11, snakemake 9.27.1 + snakemake-executor-plugin-slurm 2.8.0.
#
# Usage:  tests/slurm/start_slurm.sh [install|start|stop|status]      (default: start)
#
#   install install the missing Debian packages (apt) and nothing else; .ci/run does this while pip
#           installs, so that the test (tests/workflow/test_slurm.py) only starts daemons.
#   start   install what is missing, write configs, start munged, [mariadbd, slurmdbd,] slurmctld,
#           slurmd; wait until the node is idle; run a smoke test (srun, and sacct when accounting is
#           on). Idempotent: healthy daemons with unchanged config are left alone (and not recorded).
#   stop    stop the daemons this script started, by the PIDs it recorded in
#           $SLURM_STATE_DIR/pids/<name>.pid (never by process name).
#   status  show recorded daemons and sinfo.
#
# Environment knobs:
#   SLURM_ACCOUNTING=1   1: slurmdbd + MariaDB, so `sacct` works and the snakemake slurm plugin runs
#                        with its defaults. 0: no accounting (faster); then snakemake MUST run with
#                        --slurm-status-command squeue (otherwise it waits forever).
#   SLURM_FAKE_GPUS=1    advertise N (0..4) fake "gpu" GRES backed by /dev/null, /dev/zero, ... so rules
#                        with resources gpu=N or gres="gpu:N" can be scheduled (jobs get
#                        CUDA_VISIBLE_DEVICES, but no CUDA device exists). Accounting tracks them
#                        (AccountingStorageTRES=gres/gpu), so `sacct -o AllocTRES` shows gres/gpu=N.
#   SLURM_STATE_DIR=/tmp/slurm-ci/state   pid records + daemon stderr logs.
#   SLURM_PARTITION=debug                   name of the (default) partition.
set -euo pipefail

ACCOUNTING="${SLURM_ACCOUNTING:-1}"
FAKE_GPUS="${SLURM_FAKE_GPUS:-1}"
STATE_DIR="${SLURM_STATE_DIR:-/tmp/slurm-ci/state}"
PARTITION="${SLURM_PARTITION:-debug}"
CLUSTER=ci
DB_PASS=slurmci            # local-only MariaDB account for slurmdbd
PID_DIR="$STATE_DIR/pids"
T0=$(date +%s%N)

log() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[start_slurm %4d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
die() { log "ERROR: $*"; exit 1; }

# ---- pid helpers -----------------------------------------------------------
# alive PID NAME: process exists, is not a zombie, and /proc/PID/comm == NAME
alive() {
    local pid="${1:-}" name="$2"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/stat" ] || return 1
    [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]
}
pid_from() { cat "$1" 2>/dev/null | tr -dc '0-9' || true; }
record() { mkdir -p "$PID_DIR"; echo "$2" > "$PID_DIR/$1.pid"; }
# write_if_changed FILE CONTENT: returns 0 if FILE was (re)written
write_if_changed() {
    local tmp; tmp=$(mktemp)
    printf '%s\n' "$2" > "$tmp"
    if cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
    mv "$tmp" "$1"; chmod 644 "$1"; return 0
}
# wait_pidfile FILE NAME TIMEOUT_S: wait until FILE names a live NAME process
wait_pidfile() {
    local f="$1" name="$2" n=$(( $3 * 10 )) pid
    for ((i = 0; i < n; i++)); do
        pid=$(pid_from "$f")
        if alive "$pid" "$name"; then echo "$pid"; return 0; fi
        sleep 0.1
    done
    return 1
}
stop_one() {   # stop_one NAME  -> TERM the recorded pid, wait, then KILL
    local name="$1" f="$PID_DIR/$1.pid" pid
    pid=$(pid_from "$f")
    if alive "$pid" "$name"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 200; i++)); do alive "$pid" "$name" || break; sleep 0.1; done
        if alive "$pid" "$name"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$f"
}

do_stop() {
    for d in slurmd slurmctld slurmdbd mariadbd munged; do stop_one "$d"; done
}

do_status() {
    for d in munged mariadbd slurmdbd slurmctld slurmd; do
        pid=$(pid_from "$PID_DIR/$d.pid")
        if alive "$pid" "$d"; then echo "$d: running (pid $pid)"; else echo "$d: not running (by our records)"; fi
    done
    sinfo 2>&1 || true
}

case "${1:-start}" in
    stop) do_stop; exit 0 ;;
    status) do_status; exit 0 ;;
    install|start) ;;
    *) echo "usage: $0 [install|start|stop|status]" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$STATE_DIR" "$PID_DIR"

# ---- 1. packages -----------------------------------------------------------
PKGS=(slurm-wlm munge)
[ "$ACCOUNTING" = 1 ] && PKGS+=(slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    # keep maintainer scripts from starting daemons via invoke-rc.d
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" > "$STATE_DIR/apt-install.log" 2>&1 \
        || { tail -30 "$STATE_DIR/apt-install.log"; die "apt-get install failed"; }
    [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    log "packages installed"
fi
[ "${1:-start}" = install ] && exit 0

# ---- 2. host / node facts ----------------------------------------------------
NODE=$(hostname -s)
getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >> /etc/hosts
# slurmd -C prints e.g.: NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
HW=$(slurmd -C | head -1)
getv() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS=$(getv CPUs); BOARDS=$(getv Boards); SPB=$(getv SocketsPerBoard)
CPS=$(getv CoresPerSocket); TPC=$(getv ThreadsPerCore); MEM=$(getv RealMemory)
REALMEM=$(( MEM * 90 / 100 ))      # a bit below the machine's memory

# ---- 3. munge ----------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 755 /run/munge
if ! alive "$(pid_from /run/munge/munged.pid)" munged || ! munge -n </dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    pid=$(wait_pidfile /run/munge/munged.pid munged 10) || die "munged did not start"
    record munged "$pid"
    log "munged started (pid $pid)"
fi
munge -n </dev/null | unmunge >/dev/null || die "munge/unmunge round trip failed"

# ---- 4. configuration ---------------------------------------------------------
GRES_NODE=""; GRES_TYPES=""
GRES_CONF="# no GRES"
if [ "$FAKE_GPUS" -gt 0 ]; then
    devs=(/dev/null /dev/zero /dev/full /dev/urandom)
    [ "$FAKE_GPUS" -le ${#devs[@]} ] || die "SLURM_FAKE_GPUS must be <= ${#devs[@]}"
    GRES_NODE=" Gres=gpu:$FAKE_GPUS"; GRES_TYPES="GresTypes=gpu
AccountingStorageTRES=gres/gpu"
    GRES_CONF=""
    for ((i = 0; i < FAKE_GPUS; i++)); do GRES_CONF+="${GRES_CONF:+$'\n'}NodeName=$NODE Name=gpu File=${devs[$i]}"; done
fi
if [ "$ACCOUNTING" = 1 ]; then
    ACCT_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$NODE
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
    ACCT_CONF="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

NEW_CONF=$(cat <<EOF
# generated by start_slurm.sh
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# keep finished jobs visible to squeue for 5 min (needed by --slurm-status-command squeue)
MinJobAge=300
KillWait=5
JobCompType=jobcomp/none
$ACCT_CONF
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$GRES_TYPES
NodeName=$NODE CPUs=$CPUS Boards=$BOARDS SocketsPerBoard=$SPB CoresPerSocket=$CPS ThreadsPerCore=$TPC RealMemory=$REALMEM$GRES_NODE State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
changed=0
write_if_changed /etc/slurm/slurm.conf "$NEW_CONF" && changed=1
write_if_changed /etc/slurm/gres.conf "$GRES_CONF" && changed=1

# ---- 5. accounting: MariaDB + slurmdbd ------------------------------------------
if [ "$ACCOUNTING" = 1 ]; then
    mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql > "$STATE_DIR/mariadb-install-db.log" 2>&1
    fi
    if ! alive "$(pid_from /run/mysqld/mysqld.pid)" mariadbd; then
        rm -f /run/mysqld/mysqld.pid
        setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
            --socket=/run/mysqld/mysqld.sock --bind-address=127.0.0.1 \
            --innodb-buffer-pool-size=64M --log-error="$STATE_DIR/mariadb.err" \
            </dev/null >/dev/null 2>&1 &
        pid=$(wait_pidfile /run/mysqld/mysqld.pid mariadbd 30) || { tail "$STATE_DIR/mariadb.err"; die "mariadbd did not start"; }
        record mariadbd "$pid"
        log "mariadbd started (pid $pid)"
    fi
    for ((i = 0; i < 300; i++)); do mysqladmin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1 && break; sleep 0.1; done
    mysql --socket=/run/mysqld/mysqld.sock -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

    NEW_DBD=$(cat <<EOF
AuthType=auth/munge
DbdHost=$NODE
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
)
    dbd_changed=0
    write_if_changed /etc/slurm/slurmdbd.conf "$NEW_DBD" && dbd_changed=1
    chown root:root /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf
    dpid=$(pid_from /run/slurmdbd.pid)
    if [ "$dbd_changed" = 1 ] && alive "$dpid" slurmdbd; then kill -TERM "$dpid"; sleep 1; fi
    if ! alive "$(pid_from /run/slurmdbd.pid)" slurmdbd; then
        rm -f /run/slurmdbd.pid
        /usr/sbin/slurmdbd
        pid=$(wait_pidfile /run/slurmdbd.pid slurmdbd 30) || { tail /var/log/slurm/slurmdbd.log; die "slurmdbd did not start"; }
        record slurmdbd "$pid"
        log "slurmdbd started (pid $pid)"
    fi
    ok=0
    for ((i = 0; i < 300; i++)); do sacctmgr -n show cluster >/dev/null 2>&1 && { ok=1; break; }; sleep 0.1; done
    [ "$ok" = 1 ] || { tail /var/log/slurm/slurmdbd.log; die "slurmdbd not answering"; }
    sacctmgr -n show cluster format=cluster | grep -qw "$CLUSTER" \
        || sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

# ---- 6. slurmctld + slurmd --------------------------------------------------------
cpid=$(pid_from /run/slurmctld.pid); spid=$(pid_from /run/slurmd.pid)
if [ "$changed" = 1 ] || ! alive "$cpid" slurmctld || ! alive "$spid" slurmd; then
    for pair in "slurmd:$spid" "slurmctld:$cpid"; do
        n=${pair%%:*}; p=${pair#*:}
        if alive "$p" "$n"; then
            kill -TERM "$p"
            for ((i = 0; i < 100; i++)); do alive "$p" "$n" || break; sleep 0.1; done
            alive "$p" "$n" && kill -KILL "$p"
            log "stopped old $n (pid $p)"
        fi
    done
    rm -f /run/slurmctld.pid /run/slurmd.pid
    /usr/sbin/slurmctld
    pid=$(wait_pidfile /run/slurmctld.pid slurmctld 30) || { tail /var/log/slurm/slurmctld.log; die "slurmctld did not start"; }
    record slurmctld "$pid"; log "slurmctld started (pid $pid)"
    /usr/sbin/slurmd
    pid=$(wait_pidfile /run/slurmd.pid slurmd 30) || { tail /var/log/slurm/slurmd.log; die "slurmd did not start"; }
    record slurmd "$pid"; log "slurmd started (pid $pid)"
fi

# ---- 7. wait for the node to be idle ------------------------------------------------
state=""
for ((i = 0; i < 600; i++)); do
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true)
    case "$state" in
        idle|mixed|allocated) break ;;
        drain*|drained|down*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.1
done
case "$state" in idle|mixed|allocated) ;; *)
    scontrol show node "$NODE" || true; tail -20 /var/log/slurm/slurmctld.log
    die "node $NODE not usable (state '$state')" ;;
esac
log "node $NODE is $state"

# ---- 8. smoke test ---------------------------------------------------------------------
out=$(timeout 60 srun -N1 -n1 -t 1 --job-name=start_slurm_smoke bash -c 'echo $SLURM_JOB_ID') \
    || die "srun smoke test failed"
jid=$(tail -1 <<<"$out")
log "srun smoke test ok (job $jid)"
if [ "$ACCOUNTING" = 1 ]; then
    ok=0
    for ((i = 0; i < 100; i++)); do
        sacct -n -X -P -j "$jid" -o State 2>/dev/null | grep -q COMPLETED && { ok=1; break; }
        sleep 0.2
    done
    [ "$ok" = 1 ] || die "sacct does not report job $jid"
    log "sacct ok"
fi
log "SLURM ready: cluster=$CLUSTER node=$NODE partition=$PARTITION cpus=$CPUS mem=${REALMEM}M gpus=$FAKE_GPUS accounting=$ACCOUNTING; pids in $PID_DIR; stop: $0 stop"
