#!/bin/bash
# Paired NIfTI volumes (SRC/trainA + SRC/trainB, optional SRC/testA + SRC/testB; same file names) -> axial-slice
# shard set for stage pix2pix_phase, as an array job: task i of N handles the candidate pairs i, i+N, ...
# (ctpipe prep nifti-pairs --task-index/--n-tasks default to SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT) and
# writes only their per-volume shards; the task that finds every task record present writes prep_report.csv
# (each skipped file with the reason), prep_volumes.csv (each used pair and its split) and manifest.json.
# Re-running reuses finished volume shards (checksum + prep settings), so a requeued task only redoes what is
# missing.  From the repository root:
#
#     mkdir -p logs
#     sbatch sbatch/prep_nifti_pairs.sh                   # data/phases/raw -> data/phases/shards, 8 tasks
#     sbatch --array=0-31%16 sbatch/prep_nifti_pairs.sh   # another task count: the array size is N
#     PHASE_SRC=/scratch/phases sbatch sbatch/prep_nifti_pairs.sh --size 256 --hu-window -1024,3071
#
# Environment (optional): PHASE_SRC (default $CTPIPE_DATA/phases/raw), PHASE_SHARDS (default
# $CTPIPE_DATA/phases/shards).  Arguments go to `ctpipe prep nifti-pairs` (--size 512 | native, --hu-window LO,HI,
# --split-fractions 0.8,0.2[,test]).  The array must start at 0 with step 1 (0-N or 0-N%K).  A changed setting
# needs ALL tasks re-run (the records of one prep must agree).  No --signal: prep has nothing to save.
#SBATCH --job-name=prep_nifti_pairs
#SBATCH --array=0-7
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

src="${PHASE_SRC:-${CTPIPE_DATA:-data}/phases/raw}"
out="${PHASE_SHARDS:-${CTPIPE_DATA:-data}/phases/shards}"
echo "prep_nifti_pairs: task ${SLURM_ARRAY_TASK_ID:-0} of ${SLURM_ARRAY_TASK_COUNT:-1}: ${src} -> ${out}"
python -m ctpipe.cli prep nifti-pairs --src "$src" --out "$out" "$@"
