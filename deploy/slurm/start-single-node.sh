#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine (for CI and for trying --cluster slurm).
#
#   deploy/slurm/start-single-node.sh          # install slurm-wlm + munge if missing, start, wait for idle
#   deploy/slurm/start-single-node.sh stop     # stop the daemons this script started
#
# Needs root (apt-get, munged, slurmd). State and spool directories live in $LENSDASK_SLURM_DIR
# (default /tmp/lensdask-slurm). Idempotent: if the node already answers `sinfo` as idle, it only
# reports that. Exit status 0 when the node is idle, non-zero (with the reason) otherwise.
set -euo pipefail

DIR="${LENSDASK_SLURM_DIR:-/tmp/lensdask-slurm}"
CONF=/etc/slurm/slurm.conf
log() { echo "start-single-node: $*" >&2; }

if [[ "${1:-}" == "stop" ]]; then
  for p in slurmd slurmctld; do
    [[ -f "$DIR/$p.pid" ]] && kill "$(cat "$DIR/$p.pid")" 2>/dev/null || true
  done
  [[ -f "$DIR/munged.pid" ]] && kill "$(cat "$DIR/munged.pid")" 2>/dev/null || true
  exit 0
fi

if [[ "$(id -u)" != 0 ]]; then log "needs root (installs packages and starts slurmd)"; exit 3; fi

if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  log "Slurm already running: $(sinfo -h -o '%N %T %c CPUs')"; exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  (timeout 300 apt-get install -y -q slurm-wlm munge >/dev/null 2>&1) \
    || (timeout 300 apt-get update -q >/dev/null 2>&1 && timeout 300 apt-get install -y -q slurm-wlm munge >/dev/null) \
    || { log "cannot install slurm-wlm/munge"; exit 4; }
fi

mkdir -p "$DIR"/{state,spool,log} /etc/slurm

# munge: a key, and /run/munge owned by munge before munged starts.
if [[ ! -s /etc/munge/munge.key ]]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
if ! pgrep -x munged >/dev/null; then
  if id munge >/dev/null 2>&1; then
    su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=$DIR/munged.pid" 2>/dev/null \
      || /usr/sbin/munged --force --pid-file="$DIR/munged.pid"
  else
    /usr/sbin/munged --force --pid-file="$DIR/munged.pid"
  fi
fi

HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM="$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')"
cat > "$CONF" <<CONF
# written by lensdask deploy/slurm/start-single-node.sh
ClusterName=lensdask
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
InactiveLimit=0
KillWait=5
MinJobAge=30
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x slurmctld >/dev/null || slurmctld -c
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 1 60); do
  state="$(sinfo -h -o %T 2>/dev/null | head -1 || true)"
  if [[ "$state" =~ ^(idle|mixed|allocated) ]]; then
    log "Slurm running: $(sinfo -h -o '%N %T %c CPUs %m MB')"; exit 0
  fi
  sleep 0.5
done
log "node did not become idle (state '${state:-none}'); see $DIR/log/"
exit 5
