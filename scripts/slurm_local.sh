#!/usr/bin/env bash
# A one-node SLURM cluster (munged + slurmctld + slurmd) in a directory of its own, for dqnlab's SLURM tests and
# for trying `hydra/launcher=slurm` on one machine. Needs root and Debian's `slurm-wlm` and `munge` packages:
#   apt-get install -y --no-install-recommends slurm-wlm munge
#
#   scripts/slurm_local.sh start DIR    # writes DIR/slurm.conf, starts the daemons, waits until the node is idle
#   export SLURM_CONF=DIR/slurm.conf    # what sbatch, squeue, scontrol and submitit read
#   scripts/slurm_local.sh stop DIR     # cancels DIR's jobs, stops its daemons by the PIDs in DIR/run/
#
# DIR must be reachable by the `munge` user (0755 all the way down; pytest's tmp dirs are 0700 and are not).
# Two partitions: `debug` (the default) and `high`, which preempts it (PreemptMode=REQUEUE). Settings are chosen
# for short tests (docs/workflow.md, "Running on a SLURM cluster"): the scheduler runs every second, a requeued job
# may start again after cred_expire=5 s (SLURM's default, 120 s, makes each requeue wait minutes), finished jobs
# stay visible to `scontrol show job` for an hour (there is no accounting database: `sacct` does not work).
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$dir/slurm.conf
export SLURM_CONF=$conf

free_port() {  # a TCP port nobody listens on now (two clusters on one machine must not share ports)
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_of() { [ -s "$dir/run/$1.pid" ] && cat "$dir/run/$1.pid"; }

stop_pid() {  # SIGTERM, then SIGKILL after 5 s; only the PID this cluster wrote
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

start() {
  for exe in munged mungekey slurmctld slurmd sinfo; do
    command -v "$exe" >/dev/null || PATH=$PATH:/usr/sbin command -v "$exe" >/dev/null \
      || { echo "error: $exe not found: apt-get install -y --no-install-recommends slurm-wlm munge" >&2; exit 1; }
  done
  export PATH=$PATH:/usr/sbin
  [ "$(id -u)" -eq 0 ] || { echo "error: $0 start needs root (slurmd runs jobs as their user)" >&2; exit 1; }
  mkdir -p "$dir"/{run,log,state,spool,munge}
  chmod 0755 "$dir" "$dir/munge"  # munged refuses a socket dir that others cannot traverse
  chown munge:munge "$dir/munge"
  if [ ! -s "$dir/munge/munge.key" ]; then
    mungekey -c -k "$dir/munge/munge.key"
    chown munge:munge "$dir/munge/munge.key"
    chmod 0400 "$dir/munge/munge.key"
  fi
  local socket=$dir/munge/munge.socket
  runuser -u munge -- munged --socket="$socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
  cp "$dir/munge/munged.pid" "$dir/run/munged.pid"

  local node cpus mem
  node=$(hostname -s)
  # At least 6 job slots, also on a 2-core machine (SlurmdParameters=config_overrides): test jobs mostly wait
  # (on the scheduler, on a requeue), so several run at once, and a requeued job does not queue behind the others.
  cpus=$(nproc)
  [ "$cpus" -ge 6 ] || cpus=6
  mem=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))  # RealMemory a little under what the node has
  cat >"$conf" <<CONF
# Written by scripts/slurm_local.sh: a one-node cluster for tests (Slurm 22.05 keys).
ClusterName=dqnlab-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long (s, +1) before it may start again (default 120).
AuthInfo=socket=$socket,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
# The main scheduler and the backfill pass every second (defaults 60 s and 30 s): a requeued job starts at once.
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge=3600
KillWait=10
InactiveLimit=0
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
SlurmdParameters=config_overrides
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP PriorityTier=1 DefMemPerCPU=1000 OverSubscribe=NO
PartitionName=high Nodes=$node MaxTime=INFINITE State=UP PriorityTier=10 DefMemPerCPU=1000 PreemptMode=OFF
CONF
  slurmctld
  slurmd -N "$node"
  local i
  for i in $(seq 100); do  # ~1 s on an idle machine
    if [ "$(sinfo -h -o %t 2>/dev/null | head -1)" = idle ]; then
      echo "slurm_local: up in $dir (export SLURM_CONF=$conf)"
      return 0
    fi
    sleep 0.1
  done
  echo "error: the node did not become idle in 10 s; see $dir/log/slurmctld.log and $dir/log/slurmd.log" >&2
  sinfo >&2 || true
  exit 1
}

stop() {
  export PATH=$PATH:/usr/sbin
  local pid i
  if pid=$(pid_of slurmctld) && kill -0 "$pid" 2>/dev/null; then
    scancel --user="$(id -un)" 2>/dev/null || true  # this cluster's jobs only (SLURM_CONF is this cluster's)
    for i in $(seq 30); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.1; done
  fi
  local pids=()
  for d in slurmd slurmctld munged; do  # all three at once: each takes a second or two to exit
    if pid=$(pid_of "$d"); then pids+=("$pid"); rm -f "$dir/run/$d.pid"; fi
  done
  for pid in "${pids[@]}"; do stop_pid "$pid" & done
  wait
  echo "slurm_local: stopped ($dir)"
}

case $cmd in
  start) start ;;
  stop) stop ;;
  status) sinfo && squeue ;;
  *) usage ;;
esac
