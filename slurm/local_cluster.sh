#!/usr/bin/env bash
# A two-node SLURM cluster on one machine (real munged + slurmctld + one slurmd per node), for the test suite
# and for trying `simsiam submit` (multi-node included) on a workstation.
#
#   bash slurm/local_cluster.sh up       # install slurm-wlm/munge/slurmdbd/mariadb if missing, create the nodes,
#                                        # start, wait for idle
#   bash slurm/local_cluster.sh down     # stop the daemons and remove everything `up` created
#   bash slurm/local_cluster.sh status   # sinfo + squeue
#
# Each compute node is a network namespace created here (slurm-node1, slurm-node2, ...) with its own address
# on a private bridge (10.200.77.11, .12, ...; the controller listens on the bridge's host side 10.200.77.1),
# its own host name (node1, node2, ...; a UTS namespace) and its own /etc/hosts (/etc/netns/<ns>/hosts, bind-mounted
# in a private mount namespace). Namespaces have no default route: jobs reach each other, the controller and
# loopback, nothing else. munged runs once on the host; its socket is a file path, so every node shares it.
# Accounting (sacct: the state, nodes and exit code of every job and step, also after the job ended) goes
# through slurmdbd on the host into a MariaDB server reached by its Unix socket only (--skip-networking;
# slurmdbd logs in as root by socket authentication, so no password is stored anywhere).
#
# `up` is idempotent: when the daemons run with the same configuration it only checks that the nodes are usable.
# Needs root and iproute2 (Debian/Ubuntu paths: /etc/slurm, /var/spool/slurm*, /var/log/slurm); non-interactive.
# Environment: SLURM_LOCAL_NODES (default 2), SLURM_LOCAL_CPUS (CPUs declared per node, default: the
# machine's), SLURM_LOCAL_MEM_MB (per node, default: the machine's / nodes), SLURM_LOCAL_WAIT_S (default 90).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
DBD_CONF=$CONF_DIR/slurmdbd.conf
DB_DIR=/var/lib/mysql
DB_SOCKET=/run/mysqld/mysqld.sock   # the client library's default: slurmdbd finds it with StorageHost=localhost
DB_PID=/run/mysqld/mariadbd.pid      # mariadbd runs as the mysql user: its files live in folders it owns
DB_LOG=/var/log/slurm/mariadb/mariadbd.log
CTLD_STATE=/var/spool/slurmctld
SLURMD_STATE=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm-local
PARTITION=local
WAIT_S=${SLURM_LOCAL_WAIT_S:-90}
NODES=${SLURM_LOCAL_NODES:-2}
NET=10.200.77            # private /24: .1 = controller (host side of the bridge), .1N = nodeN
BRIDGE=slurm-br0
NS_PREFIX=slurm-         # namespace of nodeN: slurm-nodeN; its veth: host side slv-nodeN

say() { echo "[local_cluster] $*"; }
die() { echo "[local_cluster] ERROR: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages, creates network namespaces, writes $CONF and starts daemons); try: sudo bash $0 ${1:-up}"
}

node_names() { local i; for i in $(seq 1 "$NODES"); do echo "node$i"; done; }
node_addr() { echo "$NET.$((10 + ${1#node}))"; }

# has PATTERN...: grep over the whole of stdin (never `cmd | grep -q` under pipefail: grep -q exits at the first
# match, the writer may then die of SIGPIPE, and the pipeline reports a failure although the line was there)
has() { grep "$@" >/dev/null; }

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
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v slurmdbd >/dev/null 2>&1 || missing+=(slurmdbd)
  command -v mariadbd >/dev/null 2>&1 || missing+=(mariadb-server)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "SLURM is not installed (${missing[*]} missing) and apt-get is not available: install slurm-wlm, slurmdbd, mariadb-server, munge and iproute2 by hand"
  say "installing slurm-wlm, slurmdbd, mariadb-server, munge and iproute2 (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  local pkgs=(slurm-wlm slurmdbd mariadb-server munge iproute2)
  if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/tmp/local_cluster.apt.log 2>&1; then
    apt-get update -q >>/tmp/local_cluster.apt.log 2>&1 || true
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>/tmp/local_cluster.apt.log 2>&1 \
      || { tail -n 20 /tmp/local_cluster.apt.log >&2; die "apt-get install ${pkgs[*]} failed (log: /tmp/local_cluster.apt.log)"; }
  fi
  local b
  for b in slurmctld slurmd munged slurmdbd mariadbd; do
    command -v "$b" >/dev/null 2>&1 || die "the packages are installed but $b is still not on PATH"
  done
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
  touch "$RUN_DIR/munged.started-here"
  for _ in $(seq 1 20); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "munged did not start (munge -n | unmunge fails); see /var/log/munge/munged.log"
}

# ------------------------------------------------------------------------------------------------ accounting

db_alive() { mariadb-admin --socket="$DB_SOCKET" --silent ping >/dev/null 2>&1; }

start_db() {  # MariaDB for slurmdbd: Unix socket only, system tables created on first use
  db_alive && return 0
  mkdir -p "$DB_DIR" "$(dirname "$DB_SOCKET")" "$(dirname "$DB_LOG")"
  chown mysql:mysql "$DB_DIR" "$(dirname "$DB_SOCKET")" "$(dirname "$DB_LOG")"
  if [ ! -d "$DB_DIR/mysql" ]; then
    say "initialising the accounting database in $DB_DIR"
    mariadb-install-db --user=mysql --datadir="$DB_DIR" --auth-root-authentication-method=socket \
      >"$LOG_DIR/mariadb-install.log" 2>&1 || { tail -n 15 "$LOG_DIR/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  fi
  say "starting mariadbd (socket $DB_SOCKET)"
  setsid mariadbd --user=mysql --datadir="$DB_DIR" --socket="$DB_SOCKET" --pid-file="$DB_PID" \
    --skip-networking --innodb-buffer-pool-size=32M --log-error="$DB_LOG" >/dev/null 2>&1 </dev/null &
  touch "$RUN_DIR/mariadbd.started-here"
  for _ in $(seq 1 60); do db_alive && return 0; sleep 0.5; done
  tail -n 15 "$DB_LOG" >&2 2>/dev/null || true
  die "mariadbd did not answer on $DB_SOCKET (log: $DB_LOG)"
}

write_dbd_config() {  # writes $DBD_CONF.new (slurmdbd refuses a config others can read)
  cat >"$DBD_CONF.new" <<CONF
# Written by slurm/local_cluster.sh: job accounting for sacct (test/dev only).
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
CONF
  chmod 0600 "$DBD_CONF.new"
}

start_slurmdbd() {
  write_dbd_config
  if ! cmp -s "$DBD_CONF.new" "$DBD_CONF"; then
    stop_pidfile slurmdbd "$RUN_DIR/slurmdbd.pid"; mv "$DBD_CONF.new" "$DBD_CONF"; say "wrote $DBD_CONF"
  else rm -f "$DBD_CONF.new"; fi
  if ! alive "$RUN_DIR/slurmdbd.pid"; then
    say "starting slurmdbd"
    setsid slurmdbd -D >>"$LOG_DIR/slurmdbd.stdout" 2>&1 </dev/null &   # reads $DBD_CONF (its fixed place)
    echo $! >"$RUN_DIR/slurmdbd.launcher.pid"
  fi
}

register_cluster() {  # after slurm.conf names slurmdbd: wait for it, then make sure the cluster is known
  for _ in $(seq 1 60); do sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1 && break; sleep 0.5; done
  sacctmgr -n -P show cluster format=cluster 2>/dev/null | has -x localcluster && return 0
  sacctmgr -i add cluster localcluster >/dev/null 2>&1 \
    || { tail -n 15 "$LOG_DIR/slurmdbd.log" "$LOG_DIR/slurmdbd.stdout" >&2 2>/dev/null || true
         die "slurmdbd did not answer sacctmgr (log: $LOG_DIR/slurmdbd.log)"; }
  say "registered cluster localcluster in the accounting database"
}

# ------------------------------------------------------------------------------------------------ network

make_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    say "creating bridge $BRIDGE ($NET.1/24)"
    ip link add "$BRIDGE" type bridge
  fi
  ip addr show dev "$BRIDGE" | has "inet $NET.1/24" || ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

write_hosts() {  # write_hosts NS -> /etc/netns/NS/hosts: what the node's processes see as /etc/hosts
  local ns=$1 n
  mkdir -p "/etc/netns/$ns"
  {
    echo "# Written by slurm/local_cluster.sh: /etc/hosts inside the node namespace $ns"
    echo "127.0.0.1 localhost"
    echo "$NET.1 $(hostname -s)-ctl"
    for n in $(node_names); do echo "$(node_addr "$n") $n"; done
  } >"/etc/netns/$ns/hosts"
}

make_node_net() {  # make_node_net NODE -> namespace with lo + eth0 (its address) on the bridge
  local node=$1 ns=$NS_PREFIX$1 veth=slv-$1 addr
  addr=$(node_addr "$node")
  ip netns list | has -w "^$ns" || { say "creating namespace $ns ($node, $addr)"; ip netns add "$ns"; }
  if ! ip netns exec "$ns" ip link show eth0 >/dev/null 2>&1; then
    ip link del "$veth" >/dev/null 2>&1 || true
    ip link add "$veth" type veth peer name "$veth-in"
    ip link set "$veth-in" netns "$ns"
    ip netns exec "$ns" ip link set "$veth-in" name eth0
  fi
  ip link set "$veth" master "$BRIDGE"
  ip link set "$veth" up
  ip netns exec "$ns" ip link set lo up
  ip netns exec "$ns" ip addr show dev eth0 | has "inet $addr/24" || ip netns exec "$ns" ip addr add "$addr/24" dev eth0
  ip netns exec "$ns" ip link set eth0 up
  write_hosts "$ns"
}

remove_node_net() {
  local node=$1 ns=$NS_PREFIX$1 pid
  if ip netns list | has -w "^$ns"; then
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done  # leftover job steps
    ip netns delete "$ns" && say "removed namespace $ns"
  fi
  ip link del "slv-$node" >/dev/null 2>&1 || true
  rm -rf "/etc/netns/$ns"
}

# ------------------------------------------------------------------------------------------------ config

write_config() {  # writes $CONF.new; prints nothing
  local host cpus mem line nodes_expr n
  host=$(hostname -s)
  line=$(slurmd -C 2>/dev/null | head -1 || true)
  cpus=${SLURM_LOCAL_CPUS:-$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$line")}
  mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$line")
  [ -n "$cpus" ] || cpus=$(nproc)
  [ -n "$mem" ] || mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
  # Leave the operating system ~5% (a node whose RealMemory exceeds what slurmd measures is drained).
  mem=${SLURM_LOCAL_MEM_MB:-$(( mem * 95 / 100 / NODES ))}
  nodes_expr="node[1-$NODES]"; [ "$NODES" = 1 ] && nodes_expr=node1
  mkdir -p "$CONF_DIR"
  cat >"$CONF.new" <<CONF
# Written by slurm/local_cluster.sh on host $host: $NODES compute nodes in network namespaces (test/dev only).
ClusterName=localcluster
SlurmctldHost=$host($NET.1)
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
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SLURMD_STATE/%n
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldPort=6817
SlurmdPort=6818
CONF
  for n in $(node_names); do
    echo "NodeName=$n NodeAddr=$(node_addr "$n") CPUs=$cpus RealMemory=$mem State=UNKNOWN" >>"$CONF.new"
  done
  echo "PartitionName=$PARTITION Nodes=$nodes_expr Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >>"$CONF.new"
}

# ------------------------------------------------------------------------------------------------ daemons

start_slurmctld() {
  say "starting slurmctld"
  setsid slurmctld -D -f "$CONF" >>"$LOG_DIR/slurmctld.stdout" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/slurmctld.launcher.pid"
}

start_slurmd() {  # start_slurmd NODE -> slurmd -N NODE in the node's namespace, with the node's host name
  local node=$1
  say "starting slurmd for $node in namespace $NS_PREFIX$node"
  mkdir -p "$SLURMD_STATE/$node"
  # The node's network namespace, plus private mount and UTS namespaces: its /etc/hosts and its host name.
  # (Not `ip netns exec`: that remounts /sys, and slurmd needs the host's /sys/fs/cgroup.)
  setsid nsenter --net="/run/netns/$NS_PREFIX$node" unshare --mount --uts -- \
    sh -c 'mount --bind "$3" /etc/hosts && hostname "$1" && exec slurmd -D -N "$1" -f "$2"' \
    sh "$node" "$CONF" "/etc/netns/$NS_PREFIX$node/hosts" >>"$LOG_DIR/slurmd-$node.stdout" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/slurmd-$node.launcher.pid"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE
  local name=$1 pidfile=$2 pid
  if alive "$pidfile"; then
    pid=$(cat "$pidfile")
    say "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

stop_slurmds() {
  local f n
  for f in "$RUN_DIR"/slurmd-*.pid; do
    [ -e "$f" ] || continue
    case "$f" in *.launcher.pid) continue ;; esac
    n=$(basename "$f" .pid); stop_pidfile "$n" "$f"; rm -f "$RUN_DIR/$n.launcher.pid"
  done
  stop_pidfile slurmd "$RUN_DIR/slurmd.pid"  # the one-node layout of earlier versions
}

stop_slurmctld() { stop_pidfile slurmctld "$RUN_DIR/slurmctld.pid"; rm -f "$RUN_DIR/slurmctld.launcher.pid"; }

node_states() { sinfo -h -N -p "$PARTITION" -o '%N %T' 2>/dev/null | tr -d '*~#!%$@^-' || true; }

wait_ready() {
  local states="" n ready
  for _ in $(seq 1 $((WAIT_S * 2))); do
    states=$(node_states); ready=0
    for n in $(node_names); do
      case "$(awk -v n="$n" '$1 == n {print $2}' <<<"$states")" in
        idle|mixed|allocated|completing) ready=$((ready + 1)) ;;
        down|drained|draining|drain|fail|failing) scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true ;;
      esac
      alive "$RUN_DIR/slurmd-$n.launcher.pid" || alive "$RUN_DIR/slurmd-$n.pid" || {
        tail -n 15 "$LOG_DIR/slurmd-$n.stdout" >&2 2>/dev/null || true
        die "slurmd of $n exited during start-up (log: $LOG_DIR/slurmd-$n.log)"; }
    done
    if [ "$ready" = "$NODES" ]; then say "nodes ready (partition '$PARTITION'): $(tr '\n' ' ' <<<"$states")"; return 0; fi
    sleep 0.5
  done
  echo "---- slurmctld.log (tail)" >&2; tail -n 15 "$LOG_DIR/slurmctld.log" >&2 2>/dev/null || true
  for n in $(node_names); do echo "---- slurmd-$n.log (tail)" >&2; tail -n 8 "$LOG_DIR/slurmd-$n.log" >&2 2>/dev/null || true; done
  die "the nodes did not become idle within ${WAIT_S}s (sinfo: '$(tr '\n' ' ' <<<"${states:-no answer from slurmctld}")')"
}

up() {
  need_root up
  case "$NODES" in [1-9]) ;; *) die "SLURM_LOCAL_NODES must be 1..9, got '$NODES'" ;; esac
  install_packages
  mkdir -p "$CTLD_STATE" "$SLURMD_STATE" "$LOG_DIR" "$RUN_DIR"
  start_munge
  make_bridge
  local n
  for n in $(node_names); do make_node_net "$n"; done
  start_db
  start_slurmdbd
  write_config
  if ! cmp -s "$CONF.new" "$CONF"; then
    stop_slurmds; stop_slurmctld; mv "$CONF.new" "$CONF"; say "wrote $CONF"
  else rm -f "$CONF.new"; fi
  register_cluster
  alive "$RUN_DIR/slurmctld.pid" || { start_slurmctld; sleep 1; }
  for _ in $(seq 1 40); do scontrol ping >/dev/null 2>&1 && break; sleep 0.5; done
  scontrol ping 2>/dev/null | has UP \
    || { tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmctld.stdout" >&2 2>/dev/null || true; die "slurmctld did not answer 'scontrol ping'"; }
  for n in $(node_names); do alive "$RUN_DIR/slurmd-$n.pid" || start_slurmd "$n"; done
  wait_ready
}

down() {
  need_root down
  stop_slurmds
  stop_slurmctld
  stop_pidfile slurmdbd "$RUN_DIR/slurmdbd.pid"; rm -f "$RUN_DIR/slurmdbd.launcher.pid"
  if [ -e "$RUN_DIR/mariadbd.started-here" ]; then stop_pidfile mariadbd "$DB_PID"; fi
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${NS_PREFIX}node[0-9]*$" || true); do
    remove_node_net "${ns#"$NS_PREFIX"}"
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE" && say "removed bridge $BRIDGE"; fi
  if [ -e "$RUN_DIR/munged.started-here" ] && [ -s /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null && say "stopped munged" || true
  fi
  rm -rf "$RUN_DIR" "$SLURMD_STATE"/node[0-9]*
  rmdir /etc/netns 2>/dev/null || true  # only when empty (another tool may keep entries there)
  say "down: daemons stopped, namespaces and bridge removed (config $CONF, state $CTLD_STATE, accounting $DB_DIR and logs $LOG_DIR kept)"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) sinfo -N -o '%N %T %c %m'; squeue; sacct -X -S now-1hour -o JobID,JobName,State,ExitCode,NodeList ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
