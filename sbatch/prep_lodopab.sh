#!/bin/bash
# LoDoPaB-CT raw HDF5 files -> shard set, as an array job: task i of N converts the raw file pairs with
# shard index % N == i (ctpipe prep lodopab --task-index/--n-tasks default to SLURM_ARRAY_TASK_ID and
# SLURM_ARRAY_TASK_COUNT); the task that finds every shard complete writes manifest.json.  Re-running skips
# finished shards (checksums), so a requeued or resubmitted task only redoes what is missing.  From the
# repository root:
#
#     mkdir -p logs
#     sbatch sbatch/prep_lodopab.sh                     # data/lodopab/raw -> data/lodopab/shards, 16 tasks, 8 at once
#     sbatch --array=0-3 sbatch/prep_lodopab.sh         # another task count: the array size is N
#     LODOPAB_SRC=/scratch/lodopab sbatch sbatch/prep_lodopab.sh --parts train,validation
#
# Environment (optional): LODOPAB_SRC (raw files, default $CTPIPE_DATA/lodopab/raw), LODOPAB_SHARDS (output,
# default $CTPIPE_DATA/lodopab/shards).  Arguments are passed on to `ctpipe prep lodopab`.  The array must
# start at 0 with step 1 (0-N or 0-N%K).  Run without --array it converts everything in one task.
# No --signal: prep has nothing to save; a preempted task is requeued (--requeue) and skips finished shards.
#SBATCH --job-name=prep_lodopab
#SBATCH --array=0-15%8
#SBATCH --time=02:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
# shellcheck source=sbatch/_site.sh
source "${CTPIPE_REPO:-${SLURM_SUBMIT_DIR:-.}}/sbatch/_site.sh"
ctpipe_site_summary

src="${LODOPAB_SRC:-${CTPIPE_DATA:-data}/lodopab/raw}"
out="${LODOPAB_SHARDS:-${CTPIPE_DATA:-data}/lodopab/shards}"
echo "prep_lodopab: task ${SLURM_ARRAY_TASK_ID:-0} of ${SLURM_ARRAY_TASK_COUNT:-1}: ${src} -> ${out}"
python -m ctpipe.cli prep lodopab --src "$src" --out "$out" "$@"
