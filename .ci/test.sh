#!/usr/bin/env bash
# The test suite: brings up a two-node SLURM cluster on this machine (real munged/slurmctld, one slurmd per
# node, each node in its own network namespace; slurm/local_cluster.sh), runs pytest, and removes the cluster again.
set -uo pipefail
cd "$(dirname "$0")/.."
if bash slurm/local_cluster.sh up; then
  trap 'bash slurm/local_cluster.sh down' EXIT
else
  echo "[test] no local SLURM cluster could be started: SLURM tests will fail under CI=true, skip otherwise"
fi
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 tests "$@"
