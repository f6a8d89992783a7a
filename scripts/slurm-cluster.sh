#!/usr/bin/env bash
# A real two-node SLURM cluster (with accounting) on one machine, for tests and small runs.
#
#   scripts/slurm-cluster.sh start    install (once) and start munged, MariaDB, slurmdbd,
#                                     slurmctld and two slurmd acting as nodes n1 and n2
#   scripts/slurm-cluster.sh stop     stop everything this script started
#   scripts/slurm-cluster.sh status   print daemon, sinfo and sacct state
#   scripts/slurm-cluster.sh reconfigure  rewrite the configs and apply them to the running
#                                     daemons (`scontrol reconfigure`; nothing is stopped)
#
# Run as root on Debian 12 (slurm-wlm 22.05). No systemd needed: every daemon is started directly.
# All state (configs, databases, spools, pid files, logs) lives under one directory:
#   PYTHIA_SLURM_DIR      (default /var/tmp/pythia-slurm)
#   PYTHIA_SLURM_CLUSTER  cluster name (default pythia)
#   PYTHIA_SLURM_ACCOUNT  account that root's jobs are charged to (default pythia)
#   PYTHIA_SLURM_TIMEOUT  seconds to wait for each daemon (default 60)
#   PYTHIA_SLURM_PORT_BASE  first of the TCP ports used (default 17000: slurmd 17001-17002,
#                         slurmctld 17017, slurmdbd 17019, MariaDB 17030)
# Client commands find the config through /etc/slurm/slurm.conf (a link made by `start` when no
# other slurm.conf is there) or through SLURM_CONF=$PYTHIA_SLURM_DIR/etc/slurm.conf.
set -euo pipefail

STATE="${PYTHIA_SLURM_DIR:-/var/tmp/pythia-slurm}"
CLUSTER="${PYTHIA_SLURM_CLUSTER:-pythia}"
ACCOUNT="${PYTHIA_SLURM_ACCOUNT:-pythia}"
TIMEOUT="${PYTHIA_SLURM_TIMEOUT:-60}"
PORT_BASE="${PYTHIA_SLURM_PORT_BASE:-17000}"
TEMPLATES="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/slurm"
HOST="$(hostname -s)"
NODES=(n1 n2)
CTLD_PORT=$((PORT_BASE + 17))
DBD_PORT=$((PORT_BASE + 19))
DB_PORT=$((PORT_BASE + 30))
SLURMD_PORTS="$((PORT_BASE + 1))-$((PORT_BASE + 2))"
CONF="$STATE/etc/slurm.conf"
MUNGE_SOCKET="$STATE/munge/munge.socket.2"
DB_SOCKET="$STATE/mysql/mysqld.sock"
SYSTEM_CONF=/etc/slurm/slurm.conf
export SLURM_CONF="$CONF"

log() { printf '[slurm-cluster] %s\n' "$*"; }
die() {
    printf '[slurm-cluster] ERROR: %s\n' "$*" >&2
    exit 1
}

# wait_for DESCRIPTION LOGFILE COMMAND...: poll COMMAND once a second until it succeeds; after
# $TIMEOUT seconds fail, naming what did not come up and showing the end of its log.
wait_for() {
    local what="$1" logfile="$2"
    shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            printf '[slurm-cluster] ERROR: %s not ready after %ss (check: %s)\n' \
                "$what" "$TIMEOUT" "$*" >&2
            if [[ -n "$logfile" && -f "$logfile" ]]; then
                printf '[slurm-cluster] last lines of %s:\n' "$logfile" >&2
                tail -n 20 "$logfile" >&2
            fi
            exit 1
        fi
        sleep 1
    done
}

# alive PIDFILE: true when PIDFILE names a running process.
alive() {
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(cat "$1")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# stop_pidfile NAME PIDFILE: TERM the process, wait up to $TIMEOUT s, then KILL it.
stop_pidfile() {
    local name="$1" pidfile="$2" pid deadline
    if ! alive "$pidfile"; then
        rm -f "$pidfile"
        return 0
    fi
    pid="$(cat "$pidfile")"
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "$name did not exit after ${TIMEOUT}s: sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
    done
    rm -f "$pidfile"
}

ensure_root() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (it installs packages and starts daemons)"
}

install_packages() {
    local missing=()
    for bin in slurmctld:slurm-wlm slurmdbd:slurmdbd munged:munge mariadbd:mariadb-server; do
        command -v "${bin%%:*}" >/dev/null 2>&1 || missing+=("${bin#*:}")
    done
    # sacct/sinfo come with slurm-client, a dependency of slurm-wlm.
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # Old package lists give 404s: refresh them first (bounded, so a dead mirror cannot hang CI).
    timeout 300 apt-get update -qq || die "apt-get update failed or took over 300 s"
    timeout 900 apt-get install -y -q --no-install-recommends \
        slurm-wlm slurmdbd munge mariadb-server mariadb-client \
        >"$STATE/log/apt-get.log" 2>&1 ||
        die "apt-get install failed: see $STATE/log/apt-get.log"
}

render() { # render TEMPLATE OUT MODE
    sed -e "s|@STATE@|$STATE|g" -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$HOST|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@DB_PORT@|$DB_PORT|g" \
        -e "s|@SLURMD_PORTS@|$SLURMD_PORTS|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM_MB@|$MEM_MB|g" \
        -e "s|@DB_PASS@|$DB_PASS|g" "$1" >"$2.tmp"
    chmod "$3" "$2.tmp"
    mv "$2.tmp" "$2"
}

write_configs() {
    # Each node claims all CPUs of the machine (slurmd refuses fewer than configured, and
    # oversubscribing two nodes on one machine is the point) and a quarter of its memory.
    CPUS="$(nproc)"
    local total_mb
    total_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
    MEM_MB=$((total_mb / 4))
    if [[ ! -s "$STATE/etc/db_pass" ]]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/etc/db_pass")
    fi
    DB_PASS="$(cat "$STATE/etc/db_pass")"
    write_mail_shim
    render "$TEMPLATES/slurm.conf.in" "$CONF" 644
    # slurmdbd refuses a slurmdbd.conf readable by others (it holds the DB password).
    render "$TEMPLATES/slurmdbd.conf.in" "$STATE/etc/slurmdbd.conf" 600
    link_system_conf
}

# slurm.conf's MailProg: a shim that passes SLURM's mail (args: -s SUBJECT USER) to
# $STATE/etc/mail-hook when that is an executable, and otherwise drops it: nothing is sent
# unless a hook is installed (tests/test_notify.py installs a stub that records the mail).
write_mail_shim() {
    mkdir -p "$STATE/bin"
    cat >"$STATE/bin/slurm-mail.tmp" <<SHIM
#!/bin/sh
hook="$STATE/etc/mail-hook"
if [ -x "\$hook" ]; then exec "\$hook" "\$@"; fi
cat >/dev/null
exit 0
SHIM
    chmod 755 "$STATE/bin/slurm-mail.tmp"
    mv "$STATE/bin/slurm-mail.tmp" "$STATE/bin/slurm-mail"
}

cmd_reconfigure() {
    ensure_root
    [[ -s "$CONF" ]] || die "no cluster config at $CONF: run '$0 start' first"
    write_configs
    scontrol reconfigure || die "scontrol reconfigure failed (is slurmctld up?)"
    log "configuration rewritten and applied (scontrol reconfigure)"
}

# Client commands (and srun inside jobs whose SLURM_CONF was stripped) read /etc/slurm/slurm.conf.
link_system_conf() {
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    if [[ -L "$SYSTEM_CONF" || ! -e "$SYSTEM_CONF" ]]; then
        ln -sfn "$CONF" "$SYSTEM_CONF"
    elif [[ "$(readlink -f "$SYSTEM_CONF")" != "$CONF" ]]; then
        log "warning: $SYSTEM_CONF is another cluster's config; export SLURM_CONF=$CONF"
    fi
}

start_munge() {
    local pidfile="$STATE/run/munged.pid"
    if alive "$pidfile"; then
        log "munged already running"
        link_munge_socket
        return 0
    fi
    if [[ ! -s "$STATE/munge/munge.key" ]]; then
        (umask 077 && dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 2>/dev/null)
    fi
    chmod 700 "$STATE/munge"
    log "starting munged"
    # --force: munged refuses to run as root or with a socket dir outside /run otherwise.
    munged --force --key-file="$STATE/munge/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$pidfile" --log-file="$STATE/log/munged.log" \
        --seed-file="$STATE/munge/munged.seed" ||
        die "munged failed to start: see $STATE/log/munged.log"
    wait_for "munged" "$STATE/log/munged.log" munge --socket="$MUNGE_SOCKET" -n
    link_munge_socket
}

# sacctmgr/sacct ignore AuthInfo=socket= when talking to slurmdbd and use munge's default socket:
# point that at ours unless another munged owns it.
link_munge_socket() {
    local default=/run/munge/munge.socket.2
    mkdir -p "$(dirname "$default")"
    if [[ -L "$default" || ! -e "$default" ]]; then
        ln -sfn "$MUNGE_SOCKET" "$default"
    elif ! munge -n >/dev/null 2>&1 || [[ "$(readlink -f "$default")" != "$MUNGE_SOCKET" ]]; then
        log "warning: another munged serves $default; sacct may fail with 'Protocol authentication error'"
    fi
}

# shellcheck disable=SC2120  # called with arguments through wait_for
db_sql() { mariadb --protocol=socket --socket="$DB_SOCKET" -uroot "$@"; }

start_mariadb() {
    local datadir="$STATE/mysql/data" pidfile="$STATE/run/mariadbd.pid"
    if alive "$pidfile"; then
        log "MariaDB already running"
    else
        if [[ ! -d "$datadir/mysql" ]]; then
            log "initialising MariaDB in $datadir"
            rm -rf "$datadir"
            mkdir -p "$datadir"
            mariadb-install-db --user=root --datadir="$datadir" --skip-test-db \
                --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1 ||
                die "mariadb-install-db failed: see $STATE/log/mariadb-install.log"
        fi
        log "starting MariaDB on 127.0.0.1:$DB_PORT"
        # Not mysqld_safe: its restart loop outlives `stop`. Plain mariadbd, detached.
        setsid mariadbd --no-defaults --user=root --datadir="$datadir" --socket="$DB_SOCKET" \
            --pid-file="$pidfile" --port="$DB_PORT" --bind-address=127.0.0.1 \
            --log-error="$STATE/log/mariadb.log" --innodb-buffer-pool-size=128M \
            --innodb-lock-wait-timeout=900 \
            --skip-name-resolve </dev/null >/dev/null 2>&1 &
        wait_for "MariaDB" "$STATE/log/mariadb.log" db_sql -e "SELECT 1"
    fi
    # shellcheck disable=SC2119
    db_sql <<SQL || die "could not create database slurm_acct_db / user slurm"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
}

start_slurmdbd() {
    if alive "$STATE/run/slurmdbd.pid"; then
        log "slurmdbd already running"
    else
        log "starting slurmdbd"
        slurmdbd || die "slurmdbd failed to start: see $STATE/log/slurmdbd.log"
    fi
    wait_for "slurmdbd" "$STATE/log/slurmdbd.log" sacctmgr -n show cluster
}

# sacctmgr with a deadline: a slurmdbd that died after starting must not hang `start`.
sacctmgr_t() { timeout 60 sacctmgr "$@" || die "sacctmgr $* failed or took over 60 s"; }

ensure_associations() {
    if [[ -z "$(sacctmgr_t -nP show cluster "$CLUSTER" format=cluster)" ]]; then
        log "registering cluster $CLUSTER"
        sacctmgr_t -i add cluster "$CLUSTER" >/dev/null
    fi
    if [[ -z "$(sacctmgr_t -nP show account "$ACCOUNT" format=account)" ]]; then
        sacctmgr_t -i add account "$ACCOUNT" Cluster="$CLUSTER" \
            Description="pythia-suite jobs" Organization=pythia >/dev/null
    fi
    if [[ -z "$(sacctmgr_t -nP show assoc where user=root account="$ACCOUNT" format=user)" ]]; then
        sacctmgr_t -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
    fi
    # "Nothing modified" (already the default) exits non-zero: not an error.
    timeout 60 sacctmgr -i modify user root set DefaultAccount="$ACCOUNT" >/dev/null 2>&1 || true
}

start_slurmctld() {
    if alive "$STATE/run/slurmctld.pid"; then
        log "slurmctld already running"
    else
        log "starting slurmctld"
        slurmctld || die "slurmctld failed to start: see $STATE/log/slurmctld.log"
    fi
    wait_for "slurmctld" "$STATE/log/slurmctld.log" scontrol ping
}

start_slurmds() {
    for node in "${NODES[@]}"; do
        mkdir -p "$STATE/spool/slurmd-$node"
        if alive "$STATE/run/slurmd-$node.pid"; then
            log "slurmd $node already running"
        else
            log "starting slurmd $node"
            slurmd -N "$node" || die "slurmd $node failed to start: see $STATE/log/slurmd-$node.log"
        fi
    done
    for node in "${NODES[@]}"; do
        wait_for "node $node (idle in sinfo)" "$STATE/log/slurmd-$node.log" node_idle "$node"
    done
}

# node_idle NODE: true when sinfo reports NODE idle (or mixed/allocated: it is up and serving).
node_idle() {
    local state
    state="$(sinfo -h -n "$1" -o '%T')"
    case "$state" in
    idle | mixed | allocated | completing) return 0 ;;
    down* | drain* | *'*')
        # A node that registered while another slurmd was restarting may stay DOWN: resume it.
        scontrol update nodename="$1" state=resume >/dev/null 2>&1 || true
        return 1
        ;;
    *) return 1 ;;
    esac
}

# Node names n1, n2 must resolve like on a real cluster: ranks take the first node's name as
# their rendezvous address (MASTER_ADDR). Map them to 127.0.0.1 unless they already resolve.
ensure_node_names_resolve() {
    local node
    for node in "${NODES[@]}"; do
        getent hosts "$node" >/dev/null 2>&1 && continue
        log "adding '127.0.0.1 ${NODES[*]}' to /etc/hosts"
        printf '127.0.0.1 %s  # pythia-slurm\n' "${NODES[*]}" >>/etc/hosts ||
            log "warning: cannot write /etc/hosts: node names will not resolve"
        return 0
    done
}

cmd_start() {
    ensure_root
    mkdir -p "$STATE"/{etc,log,run,spool/slurmctld,munge,mysql}
    install_packages
    write_configs
    ensure_node_names_resolve
    start_munge
    start_mariadb
    start_slurmdbd
    ensure_associations
    start_slurmctld
    start_slurmds
    wait_for "sacct" "$STATE/log/slurmdbd.log" sacct -n -X -S now-1minutes
    log "cluster $CLUSTER up: nodes ${NODES[*]} in partition debug, account $ACCOUNT, state $STATE"
    log "client config: $SYSTEM_CONF -> $CONF (or export SLURM_CONF=$CONF)"
}

cmd_stop() {
    ensure_root
    [[ -d "$STATE" ]] || {
        log "nothing to stop: $STATE does not exist"
        return 0
    }
    for node in "${NODES[@]}"; do
        stop_pidfile "slurmd $node" "$STATE/run/slurmd-$node.pid"
    done
    stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
    stop_pidfile slurmdbd "$STATE/run/slurmdbd.pid"
    stop_pidfile MariaDB "$STATE/run/mariadbd.pid"
    stop_pidfile munged "$STATE/run/munged.pid"
    log "stopped (state kept in $STATE; remove it for a fresh cluster)"
}

cmd_status() {
    local down=0
    for d in munged mariadbd slurmdbd slurmctld "${NODES[@]/#/slurmd-}"; do
        if alive "$STATE/run/$d.pid"; then
            printf '%-12s running (pid %s)\n' "$d" "$(cat "$STATE/run/$d.pid")"
        else
            printf '%-12s stopped\n' "$d"
            down=1
        fi
    done
    if alive "$STATE/run/slurmctld.pid"; then
        sinfo -N -o '%N %P %T %c %m' || true
    fi
    if alive "$STATE/run/slurmdbd.pid"; then
        sacct -a -X -S now-1days -o JobID,JobName%20,State,NodeList,Elapsed | tail -n 20 || true
    fi
    return "$down"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
reconfigure) cmd_reconfigure ;;
*)
    echo "usage: $0 start|stop|status|reconfigure   (state in \$PYTHIA_SLURM_DIR, default /var/tmp/pythia-slurm)" >&2
    exit 2
    ;;
esac
