#!/usr/bin/env bash
# Install (Debian, as root) and start a single-node SLURM on localhost for the SLURM tests.
#
# Why a real SLURM: the launcher's and the sweep's SLURM backend submit through
# submitit, whose behaviour (sbatch scripts, job arrays, requeue, scancel) only a
# real controller shows. The cluster is as small as SLURM allows: munged,
# slurmctld and slurmd on this host, no cgroups (proctrack/linuxproc,
# task/none), no accounting database, CPU only. Partitions:
#   cpu        default, every account allowed
#   restricted only account "pva" may submit (so tests can see SLURM refuse an account)
# Idempotent: when the cluster already answers, it only checks it (about 1 s).
# PVA_SLURM_NO_INSTALL=1: start an installed SLURM, never install one.
# Exit 0 when `srun hostname` works; non-zero with one line on stderr otherwise.
set -uo pipefail

CONF=/etc/slurm/slurm.conf
NODE="$(hostname -s)"
CPUS="${PVA_SLURM_CPUS:-2}"
MEM_MB="${PVA_SLURM_MEM_MB:-4000}"

fail() { echo "start_slurm: $*" >&2; exit 1; }

cluster_ok() {
  timeout 20 sinfo -h -o '%P %T' 2>/dev/null | grep -Eq 'idle|mixed|allocated' \
    && timeout 30 srun -p cpu -N1 -n1 -t 1 hostname >/dev/null 2>&1
}

if command -v sinfo >/dev/null 2>&1 && [ -f "$CONF" ] && cluster_ok; then
  echo "start_slurm: SLURM already running on $NODE"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || fail "needs root to install and start SLURM"
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  # The tests set PVA_SLURM_NO_INSTALL=1: a test run starts a cluster but never installs packages.
  [ "${PVA_SLURM_NO_INSTALL:-0}" = 1 ] && fail "slurm-wlm and munge are not installed (run .ci/start_slurm.sh as root)"
  command -v apt-get >/dev/null 2>&1 || fail "no apt-get: install slurm-wlm and munge by hand"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q slurm-wlm munge; } >/tmp/start_slurm_apt.log 2>&1 \
    || fail "apt-get install slurm-wlm munge failed (see /tmp/start_slurm_apt.log)"
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
cat >"$CONF" <<EOF
# Written by pva-sae .ci/start_slurm.sh: a single-node test cluster.
ClusterName=pva
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=restricted Nodes=$NODE AllowAccounts=pva MaxTime=INFINITE State=UP
EOF
# No cgroup.conf: SLURM 22.05 has no "disabled" cgroup plugin; with task/none and
# proctrack/linuxproc slurmd only probes the cgroup mount and carries on.
rm -f /etc/slurm/cgroup.conf

[ -s /etc/munge/munge.key ] || mungekey --create >/dev/null 2>&1 || fail "cannot create /etc/munge/munge.key"
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
if ! pgrep -u munge -x munged >/dev/null 2>&1; then
  runuser -u munge -- munged >/dev/null 2>&1 || fail "munged did not start (see /var/log/munge/munged.log)"
fi

for daemon in slurmctld slurmd; do
  pidfile="/run/$daemon.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")" 2>/dev/null  # restart it so it reads the config written above
    sleep 1
  fi
done
slurmctld >/dev/null 2>&1 || fail "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
slurmd -N "$NODE" >/dev/null 2>&1 || fail "slurmd did not start (see /var/log/slurm/slurmd.log)"

for _ in $(seq 1 30); do
  if cluster_ok; then
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    echo "start_slurm: SLURM up on $NODE ($CPUS CPUs, ${MEM_MB} MB; partitions cpu, restricted)"
    exit 0
  fi
  sleep 1
done
fail "SLURM daemons started but 'srun hostname' does not run (see /var/log/slurm/)"
