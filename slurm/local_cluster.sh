#!/usr/bin/env bash
# A one-node SLURM cluster on localhost (real munged + slurmctld + slurmd), for the test suite and for trying
# `simsiam submit` on a workstation.
#
#   bash slurm/local_cluster.sh up      # install slurm-wlm/munge if missing, write the config, start, wait for idle
#   bash slurm/local_cluster.sh down    # stop the daemons started by `up`
#   bash slurm/local_cluster.sh status  # sinfo + squeue
#
# `up` is idempotent: when the daemons run with the same configuration it only checks that the node is usable.
# Needs root (Debian/Ubuntu paths: /etc/slurm, /var/spool/slurm*, /var/log/slurm); non-interactive (CI=true).
# Environment: SLURM_LOCAL_CPUS / SLURM_LOCAL_MEM_MB override the detected node size; SLURM_LOCAL_WAIT_S bounds
# the wait for the node (default 90).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
CTLD_STATE=/var/spool/slurmctld
SLURMD_STATE=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm-local
PARTITION=local
WAIT_S=${SLURM_LOCAL_WAIT_S:-90}

say() { echo "[local_cluster] $*"; }
die() { echo "[local_cluster] ERROR: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages, writes $CONF and starts daemons); try: sudo bash $0 ${1:-up}"
}

alive() {  # alive PIDFILE -> true when the process in it runs
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
  command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
  command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
  command -v munged >/dev/null 2>&1 || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "SLURM is not installed (${missing[*]} missing) and apt-get is not available: install slurm-wlm and munge by hand"
  say "installing slurm-wlm and munge (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >/tmp/local_cluster.apt.log 2>&1; then
    apt-get update -q >>/tmp/local_cluster.apt.log 2>&1 || true
    apt-get install -y -q --no-install-recommends slurm-wlm munge >>/tmp/local_cluster.apt.log 2>&1 \
      || { tail -20 /tmp/local_cluster.apt.log >&2; die "apt-get install slurm-wlm munge failed (log: /tmp/local_cluster.apt.log)"; }
  fi
  command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 \
    || die "slurm-wlm/munge installed but slurmctld/slurmd/munged are still not on PATH"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    say "generating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile=/etc/munge/munge.key --force >/dev/null
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
  fi
  if id munge >/dev/null 2>&1; then
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 0700 /etc/munge /var/log/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
  fi
  say "starting munged"
  if id munge >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged >/dev/null 2>&1 || /usr/sbin/munged --force >/dev/null 2>&1 || true
  else
    /usr/sbin/munged --force >/dev/null 2>&1 || true
  fi
  for _ in $(seq 1 20); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "munged did not start (munge -n | unmunge fails); see /var/log/munge/munged.log"
}

write_config() {  # writes $CONF.new; prints nothing
  local host cpus mem line sockets cores threads boards
  host=$(hostname -s)
  line=$(slurmd -C 2>/dev/null | head -1 || true)
  cpus=${SLURM_LOCAL_CPUS:-$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$line")}
  mem=${SLURM_LOCAL_MEM_MB:-$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$line")}
  [ -n "$cpus" ] || cpus=$(nproc)
  [ -n "$mem" ] || mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
  # Leave the operating system ~5% (a node whose RealMemory exceeds what slurmd measures is drained).
  mem=$(( mem * 95 / 100 ))
  mkdir -p "$CONF_DIR"
  cat >"$CONF.new" <<EOF
# Written by slurm/local_cluster.sh for host $host: a one-node cluster on localhost (test/dev only).
ClusterName=localcluster
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=kill_invalid_depend,bf_interval=2,sched_interval=2
JobRequeue=1
ReturnToService=2
# Short timeouts keep tests fast: dead jobs are killed quickly, finished jobs stay queryable (squeue) for 10 min.
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
KillWait=5
OverTimeLimit=0
InactiveLimit=0
Waittime=0
MinJobAge=600
UnkillableStepTimeout=60
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SLURMD_STATE
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_daemon() {  # start_daemon NAME -> runs NAME -D in the background, its own session, logs to $LOG_DIR
  local name=$1
  say "starting $name"
  setsid "$name" -D -f "$CONF" >>"$LOG_DIR/$name.stdout" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.launcher.pid"
}

stop_daemon() {
  local name=$1 pidfile=$RUN_DIR/$1.pid pid
  if alive "$pidfile"; then
    pid=$(cat "$pidfile")
    say "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile" "$RUN_DIR/$name.launcher.pid"
}

node_state() { sinfo -h -N -p "$PARTITION" -o '%T' 2>/dev/null | head -1 | tr -d '*~#!%$@^-' || true; }

wait_ready() {
  local state="" reason
  for _ in $(seq 1 $((WAIT_S * 2))); do
    state=$(node_state)
    case "$state" in
      idle|mixed|allocated|completing) say "node $(hostname -s) is $state (partition '$PARTITION')"; return 0 ;;
      down|drained|draining|drain|fail|failing)
        scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
    esac
    if ! alive "$RUN_DIR/slurmd.launcher.pid" && ! alive "$RUN_DIR/slurmd.pid"; then
      tail -15 "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
      die "slurmd exited during start-up (log: $LOG_DIR/slurmd.log)"
    fi
    sleep 0.5
  done
  reason=$(sinfo -h -N -o '%T %E' 2>/dev/null | head -1 || true)
  echo "---- slurmctld.log (tail)" >&2; tail -15 "$LOG_DIR/slurmctld.log" >&2 2>/dev/null || true
  echo "---- slurmd.log (tail)" >&2; tail -15 "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
  die "the node did not become idle within ${WAIT_S}s (state: '${state:-no answer from slurmctld}' ${reason:+/ $reason})"
}

up() {
  need_root up
  install_packages
  mkdir -p "$CTLD_STATE" "$SLURMD_STATE" "$LOG_DIR" "$RUN_DIR"
  start_munge
  write_config
  local changed=0
  if ! cmp -s "$CONF.new" "$CONF"; then changed=1; mv "$CONF.new" "$CONF"; say "wrote $CONF"; else rm -f "$CONF.new"; fi
  if [ $changed = 1 ]; then stop_daemon slurmd; stop_daemon slurmctld; fi
  alive "$RUN_DIR/slurmctld.pid" || { start_daemon slurmctld; sleep 1; }
  for _ in $(seq 1 40); do scontrol ping >/dev/null 2>&1 && break; sleep 0.5; done
  scontrol ping 2>/dev/null | grep -q UP \
    || { tail -20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmctld.stdout" >&2 2>/dev/null || true; die "slurmctld did not answer 'scontrol ping'"; }
  alive "$RUN_DIR/slurmd.pid" || start_daemon slurmd
  wait_ready
}

down() {
  need_root down
  stop_daemon slurmd
  stop_daemon slurmctld
  say "stopped (munged left running; state in $CTLD_STATE)"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) sinfo; squeue ;;
  *) die "usage: $0 up|down|status" ;;
esac
