#!/usr/bin/env bash
# The test suite: brings up a one-node SLURM cluster on localhost (real slurmctld/slurmd/munge),
# runs pytest, and stops the daemons again.
set -uo pipefail
cd "$(dirname "$0")/.."
if bash slurm/local_cluster.sh up; then
  trap 'bash slurm/local_cluster.sh down' EXIT
else
  echo "[test] no local SLURM cluster could be started: SLURM tests will fail under CI=true, skip otherwise"
fi
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 tests "$@"
