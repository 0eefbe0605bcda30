#!/usr/bin/env bash
# A real single-node SLURM cluster (slurmctld + slurmd + slurmdbd/MariaDB accounting), started by hand as
# root without systemd, for the ctpipe test suite.  Facts behind every setting: /work/shared/SLURM_LOCAL.md.
#
# usage: tests/slurm/cluster.sh up|down|status|env [STATE_DIR]
#   up      install the Debian packages when missing, then start munged -> mariadbd -> slurmdbd ->
#           slurmctld -> slurmd and wait until the node is idle.  Idempotent: a healthy cluster from the
#           same state dir with the same configuration is reused.
#   down    cancel every job, wait for an empty queue, stop the daemons this script started (reverse order).
#           The state (job ids, accounting database) is kept; delete STATE_DIR to start from scratch.
#   status  print daemon and node state; exit 0 only when the cluster is healthy.
#   env     print the `export SLURM_CONF=...` line that client commands (sbatch, sinfo, ...) need.
#
# Environment knobs (all optional):
#   CTPIPE_SLURM_STATE    state dir when none is given (default /tmp/ctpipe-slurm)
#   CTPIPE_SLURM_CPUS     CPUs the node advertises (default 4; may exceed the real count)
#   CTPIPE_SLURM_MEM_MB   RealMemory of the node in MB (default 4000)
#   CTPIPE_SLURM_TIMEOUT  seconds allowed for each wait (default 60)
#   CTPIPE_SLURM_NODES    1 (default: one slurmd named after the host) or 2: two slurmd on this host, nodes
#                         ctpipe-n1/ctpipe-n2 (ports 6821/6822, added to /etc/hosts), for multi-node tests;
#                         switching the count restarts the cluster (the configuration changes)
#   CTPIPE_SLURM_MAX_ARRAY  MaxArraySize (default 16: the sbatch/ prep arrays 0-15 fit, and the tests can
#                         check that a longer prep array is split into several)
set -euo pipefail

CMD="${1:-}"
STATE="${2:-${CTPIPE_SLURM_STATE:-/tmp/ctpipe-slurm}}"
CPUS="${CTPIPE_SLURM_CPUS:-4}"
MEM_MB="${CTPIPE_SLURM_MEM_MB:-4000}"
TIMEOUT="${CTPIPE_SLURM_TIMEOUT:-60}"
MAX_ARRAY="${CTPIPE_SLURM_MAX_ARRAY:-16}"
NODES="${CTPIPE_SLURM_NODES:-1}"
[[ "$NODES" == 1 || "$NODES" == 2 ]] || { echo "CTPIPE_SLURM_NODES=$NODES: use 1 or 2" >&2; exit 2; }
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
NEEDED_COMMANDS=(slurmctld slurmd slurmdbd sinfo sbatch sacct scontrol munged munge unmunge mariadbd mariadb-install-db mariadb)

CONF="$STATE/slurm.conf"
DBD_CONF="$STATE/slurmdbd.conf"
RUN="$STATE/run"
LOG="$STATE/log"
DB="$STATE/db"
DB_SOCK="$DB/mysqld.sock"
export SLURM_CONF="$CONF"

log() { printf '[cluster.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

tail_log() {  # tail_log FILE...: show the end of daemon logs after a failure
    local f
    for f in "$@"; do
        if [[ -f "$f" ]]; then
            printf -- '----- last lines of %s -----\n' "$f" >&2
            tail -n 25 "$f" >&2 || true
        else
            printf -- '----- %s does not exist -----\n' "$f" >&2
        fi
    done
}

wait_until() {  # wait_until WHAT LOGFILE CMD...: poll CMD every 0.2 s for $TIMEOUT s
    local what="$1" logfile="$2"
    shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${TIMEOUT}s waiting for $what (raise CTPIPE_SLURM_TIMEOUT if the machine is slow)"
            tail_log "$logfile"
            exit 1
        fi
        sleep 0.2
    done
}

pid_alive() {  # pid_alive PIDFILE
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(tr -dc '0-9' <"$1")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

# ------------------------------------------------------------------------------------------------ install
require_root() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (the test cluster runs slurmd/slurmctld as root); \
re-run with sudo, or run the SLURM tests in CI where the job runs as root"
}

missing_commands() {
    local c
    for c in "${NEEDED_COMMANDS[@]}"; do
        command -v "$c" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$c" >/dev/null 2>&1 || echo "$c"
    done
}

install_packages() {
    local missing
    missing="$(missing_commands | tr '\n' ' ')"
    [[ -z "${missing// /}" ]] && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing commands ($missing) and apt-get is not available: \
install ${PACKAGES[*]} with this system's package manager"
    log "installing ${PACKAGES[*]} (missing: $missing)"
    local t0=$SECONDS created_policy=0
    # Keep the packages' maintainer scripts from starting daemons of their own.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
    } >"/tmp/ctpipe-slurm-apt.log" 2>&1 || rc=$?
    ((created_policy)) && rm -f /usr/sbin/policy-rc.d
    if ((rc != 0)); then
        tail_log /tmp/ctpipe-slurm-apt.log
        die "apt-get install failed (exit $rc); full log: /tmp/ctpipe-slurm-apt.log"
    fi
    log "packages installed in $((SECONDS - t0)) s"
}

ensure_hostname_resolves() {
    local node="$1"
    getent hosts "$node" >/dev/null 2>&1 && return 0
    log "adding '127.0.0.1 $node' to /etc/hosts (slurmd needs its node name to resolve)"
    printf '127.0.0.1 %s\n' "$node" >>/etc/hosts
}

# ------------------------------------------------------------------------------------------------ config
# Node names: the host's short name (one node), or ctpipe-n1 ctpipe-n2 (two slurmd on this host).
node_names() {
    if [[ "$NODES" == 1 ]]; then hostname -s; else echo ctpipe-n1 ctpipe-n2; fi
}

# slurmd pid file of node NAME (as slurm.conf names it).
slurmd_pidfile() {
    if [[ "$NODES" == 1 ]]; then echo "$RUN/slurmd.pid"; else echo "$RUN/slurmd-$1.pid"; fi
}

node_lines() {
    local i=0 name
    if [[ "$NODES" == 1 ]]; then
        printf '%s\n' "SlurmdSpoolDir=$STATE/spool" "SlurmdPidFile=$RUN/slurmd.pid" "SlurmdLogFile=$LOG/slurmd.log" \
            "NodeName=$1 NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
        return 0
    fi
    printf '%s\n' "SlurmdSpoolDir=$STATE/spool/%n" "SlurmdPidFile=$RUN/slurmd-%n.pid" "SlurmdLogFile=$LOG/slurmd-%n.log"
    for name in $(node_names); do
        i=$((i + 1))
        echo "NodeName=$name NodeAddr=127.0.0.1 Port=$((6820 + i)) CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
    done
}

write_configs() {  # write slurm.conf / slurmdbd.conf into $STATE/*.new; compare with the running ones later
    local node="$1"
    cat >"$CONF.new" <<EOF
# Generated by tests/slurm/cluster.sh -- a single-node test cluster.  Do not edit: regenerated on 'up'.
ClusterName=ctpipe
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
JobRequeue=1
KillWait=10
InactiveLimit=0
MinJobAge=300
MaxArraySize=$MAX_ARRAY
SlurmdParameters=config_overrides
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/ctld
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmctldLogFile=$LOG/slurmctld.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
$(node_lines "$node")
PartitionName=debug Nodes=ALL Default=YES MaxTime=7-00:00:00 State=UP
EOF
    cat >"$DBD_CONF.new" <<EOF
# Generated by tests/slurm/cluster.sh.
DbdHost=localhost
DbdPort=6819
SlurmUser=root
AuthType=auth/munge
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=ctpipe-test
EOF
    chmod 600 "$DBD_CONF.new"
}

configs_unchanged() {
    cmp -s "$CONF" "$CONF.new" && cmp -s "$DBD_CONF" "$DBD_CONF.new"
}

install_configs() {
    mv -f "$CONF.new" "$CONF"
    mv -f "$DBD_CONF.new" "$DBD_CONF"
    chown root:root "$DBD_CONF"
    chmod 600 "$DBD_CONF"
}

# ------------------------------------------------------------------------------------------------ daemons
munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        log "munged already running: reusing it"
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 755 /run/munge
    runuser -u munge -- munged --force </dev/null >>"$LOG/munged.out" 2>&1 ||
        { tail_log "$LOG/munged.out" /var/log/munge/munged.log; die "munged failed to start"; }
    wait_until "munged (munge -n | unmunge)" /var/log/munge/munged.log munge_works
    # munged writes its pid to /run/munge/munged.pid; remember it as ours so 'down' stops it.
    cp /run/munge/munged.pid "$RUN/munged.pid" 2>/dev/null || pgrep -x -u munge munged | head -n1 >"$RUN/munged.pid"
}

db_query() { mariadb --no-defaults --socket="$DB_SOCK" -u root "$@"; }

start_mariadb() {
    if pid_alive "$DB/mysqld.pid" && db_query -e 'SELECT 1' >/dev/null 2>&1; then
        return 0
    fi
    install -d -o mysql -g mysql -m 750 "$DB"
    if [[ ! -d "$DB/data/mysql" ]]; then
        log "initialising MariaDB datadir $DB/data"
        rm -rf "$DB/data"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB/data" --skip-test-db \
            --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 ||
            { tail_log "$LOG/mariadb-install.log"; die "mariadb-install-db failed"; }
    fi
    setsid mariadbd --no-defaults --user=mysql --datadir="$DB/data" --socket="$DB_SOCK" \
        --pid-file="$DB/mysqld.pid" --skip-networking --log-error="$DB/mariadb.log" \
        --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
    wait_until "mariadbd to accept connections on $DB_SOCK" "$DB/mariadb.log" db_query -e 'SELECT 1'
    db_query <<'EOF'
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'ctpipe-test';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_slurmdbd() {
    pid_alive "$RUN/slurmdbd.pid" && return 0
    # slurmdbd has no -f: it reads slurmdbd.conf next to $SLURM_CONF.  slurmdbd.conf has no socket
    # option: libmariadb takes the socket path from MYSQL_UNIX_PORT.
    MYSQL_UNIX_PORT="$DB_SOCK" setsid slurmdbd </dev/null >>"$LOG/slurmdbd.out" 2>&1 ||
        { tail_log "$LOG/slurmdbd.out" "$LOG/slurmdbd.log"; die "slurmdbd failed to start"; }
    wait_until "slurmdbd to listen on port 6819" "$LOG/slurmdbd.log" port_open 6819
}

node_state() { sinfo -h -N -o %T 2>/dev/null | tr -d '*~#!%$@^-' | sort -u | paste -sd, -; }
node_usable() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)(,(idle|mixed|allocated|completing))*$ ]]; }
node_idle() { [[ "$(node_state)" == idle ]]; }
slurmds_alive() {
    local name
    for name in $(node_names); do pid_alive "$(slurmd_pidfile "$name")" || return 1; done
}

start_slurm() {
    pid_alive "$RUN/slurmctld.pid" || setsid slurmctld -f "$CONF" </dev/null >>"$LOG/slurmctld.out" 2>&1 ||
        { tail_log "$LOG/slurmctld.out" "$LOG/slurmctld.log"; die "slurmctld failed to start"; }
    wait_until "slurmctld to answer (scontrol ping)" "$LOG/slurmctld.log" scontrol ping
    local name
    for name in $(node_names); do
        pid_alive "$(slurmd_pidfile "$name")" && continue
        if [[ "$NODES" == 1 ]]; then
            setsid slurmd -f "$CONF" </dev/null >>"$LOG/slurmd.out" 2>&1 ||
                { tail_log "$LOG/slurmd.out" "$LOG/slurmd.log"; die "slurmd failed to start"; }
        else
            mkdir -p "$STATE/spool/$name"
            setsid slurmd -f "$CONF" -N "$name" </dev/null >>"$LOG/slurmd-$name.out" 2>&1 ||
                { tail_log "$LOG/slurmd-$name.out" "$LOG/slurmd-$name.log"; die "slurmd -N $name failed to start"; }
        fi
    done
    wait_until "every node to become idle (sinfo -h -N -o %T)" "$LOG/slurmctld.log" node_idle
}

healthy() {
    munge_works && pid_alive "$DB/mysqld.pid" && pid_alive "$RUN/slurmdbd.pid" &&
        pid_alive "$RUN/slurmctld.pid" && slurmds_alive && node_usable
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: TERM, wait (bounded), then KILL
    local name="$1" pidfile="$2" pid deadline
    pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid="$(tr -dc '0-9' <"$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "$name (pid $pid) ignored SIGTERM for ${TIMEOUT}s: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
}

queue_empty() { [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && scontrol ping >/dev/null 2>&1; }

cancel_all_jobs() {
    pid_alive "$RUN/slurmctld.pid" || return 0
    local ids
    ids="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
    [[ -z "${ids// /}" ]] && return 0
    log "cancelling jobs: $ids"
    # shellcheck disable=SC2086  # word splitting of the id list is intended
    scancel --full $ids 2>/dev/null || true
    wait_until "the queue to empty after scancel" "$LOG/slurmctld.log" queue_empty
}

# ------------------------------------------------------------------------------------------------ commands
cmd_up() {
    require_root
    local t0=$SECONDS node
    install_packages
    export PATH="$PATH:/usr/sbin:/sbin"
    node="$(hostname -s)"
    ensure_hostname_resolves "$node"
    local name
    for name in $(node_names); do ensure_hostname_resolves "$name"; done
    mkdir -p "$STATE" "$RUN" "$LOG" "$STATE/ctld" "$STATE/spool"
    chmod 755 "$STATE"
    write_configs "$node"
    if healthy && configs_unchanged; then
        rm -f "$CONF.new" "$DBD_CONF.new"
        log "cluster in $STATE is already up: reusing it"
        return 0
    fi
    if pid_alive "$RUN/slurmctld.pid" || pid_alive "$RUN/slurmdbd.pid"; then
        log "cluster in $STATE is unhealthy or its configuration changed: restarting it"
        stop_daemons
    fi
    install_configs
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm
    log "cluster up in $((SECONDS - t0)) s: node(s) $(node_names | xargs), $CPUS CPUs each, partition debug; export SLURM_CONF=$CONF"
}

stop_daemons() {
    local pidfile
    for pidfile in "$RUN"/slurmd.pid "$RUN"/slurmd-*.pid; do
        [[ -e "$pidfile" ]] && stop_pidfile slurmd "$pidfile"
    done
    stop_pidfile slurmctld "$RUN/slurmctld.pid"
    stop_pidfile slurmdbd "$RUN/slurmdbd.pid"
    stop_pidfile mariadbd "$DB/mysqld.pid"
    stop_pidfile munged "$RUN/munged.pid"
}

cmd_down() {
    require_root
    export PATH="$PATH:/usr/sbin:/sbin"
    [[ -d "$STATE" ]] || { log "no state dir $STATE: nothing to stop"; return 0; }
    local t0=$SECONDS
    cancel_all_jobs
    stop_daemons
    log "cluster in $STATE stopped in $((SECONDS - t0)) s"
}

cmd_status() {
    export PATH="$PATH:/usr/sbin:/sbin"
    local name file
    local slurmds=() node
    for node in $(node_names); do slurmds+=("slurmd:$(slurmd_pidfile "$node")"); done
    for name in munged:"$RUN/munged.pid" mariadbd:"$DB/mysqld.pid" slurmdbd:"$RUN/slurmdbd.pid" \
        slurmctld:"$RUN/slurmctld.pid" "${slurmds[@]}"; do
        file="${name#*:}"
        if pid_alive "$file"; then echo "${name%%:*}: running (pid $(cat "$file"))"; else echo "${name%%:*}: stopped"; fi
    done
    # sinfo retries for MessageTimeout (10 s) when slurmctld is down: only ask a live one.
    if pid_alive "$RUN/slurmctld.pid"; then echo "node: $(node_state || true)"; else echo "node: unknown (slurmctld stopped)"; fi
    healthy || return 1
}

case "$CMD" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: $0 up|down|status|env [STATE_DIR] (got '${CMD}')" ;;
esac
