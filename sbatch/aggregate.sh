#!/bin/bash
# Tabulate every evaluated run under RUNS into OUT: summary.csv, per_sample.csv and PNGs (ctpipe aggregate).
# From the repository root:
#
#     mkdir -p logs
#     sbatch sbatch/aggregate.sh                                    # runs -> results/summary
#     sbatch --kill-on-invalid-dep=yes --dependency=afterok:<training job id> sbatch/aggregate.sh runs/fbp_window results/exp1
#
# Arguments (optional): RUNS (default $CTPIPE_RUNS or runs), OUT (default $CTPIPE_RESULTS/summary, i.e.
# results/summary).  Aggregation only reads run folders and rewrites its outputs atomically, so it is safe to
# requeue or repeat.
#SBATCH --job-name=aggregate
#SBATCH --time=00:30:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
# shellcheck source=sbatch/_site.sh
source "${CTPIPE_REPO:-${SLURM_SUBMIT_DIR:-.}}/sbatch/_site.sh"
ctpipe_site_summary

runs="${1:-${CTPIPE_RUNS:-runs}}"
out="${2:-${CTPIPE_RESULTS:-results}/summary}"
echo "aggregate: ${runs} -> ${out}"
python -m ctpipe.cli aggregate --runs "$runs" --out "$out"
