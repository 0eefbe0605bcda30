#!/bin/bash
# CT NIfTI files (HU) -> dual-view DRR shard set for the X-ray -> CT stages, as an array job: task i of N converts
# the files (groups) g with g % N == i (`ctpipe prep drr` takes --task-index/--n-tasks from SLURM_ARRAY_TASK_ID /
# SLURM_ARRAY_TASK_COUNT); the task that finds every group done publishes the shards and writes manifest.json and
# prep_report.csv (bad files are skipped and listed there).  Re-running skips finished groups.  From the repository
# root:
#
#     mkdir -p logs
#     sbatch sbatch/prep_drr.sh                          # data/xray2ct/ct -> data/xray2ct/shards, 16 tasks, 8 at once
#     sbatch --array=0-63%16 sbatch/prep_drr.sh          # another task count
#     CT_SRC=/scratch/lidc_nifti sbatch sbatch/prep_drr.sh --xray-size 128 --volume-sizes 64,256 --cone-beam
#     source sbatch/_site.sh; mapfile -t site < <(ctpipe_sbatch_args 1)
#     sbatch "${site[@]}" sbatch/prep_drr.sh --device cuda                  # render the DRRs on a GPU
#
# Environment (optional): CT_SRC (NIfTI folder, default $CTPIPE_DATA/xray2ct/ct), XRAY2CT_SHARDS (output, default
# $CTPIPE_DATA/xray2ct/shards).  Arguments are passed on to `ctpipe prep drr` (defaults: 128^2 X-rays, volume_64 and
# volume_256, parallel beam).  The array must start at 0 with step 1.  No --signal: prep has nothing to save; a
# preempted task is requeued (--requeue) and skips finished groups.
#SBATCH --job-name=prep_drr
#SBATCH --array=0-15%8
#SBATCH --time=04:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
# shellcheck source=sbatch/_site.sh
source "${CTPIPE_REPO:-${SLURM_SUBMIT_DIR:-.}}/sbatch/_site.sh"
ctpipe_site_summary

src="${CT_SRC:-${CTPIPE_DATA:-data}/xray2ct/ct}"
out="${XRAY2CT_SHARDS:-${CTPIPE_DATA:-data}/xray2ct/shards}"
echo "prep_drr: task ${SLURM_ARRAY_TASK_ID:-0} of ${SLURM_ARRAY_TASK_COUNT:-1}: ${src} -> ${out}"
python -m ctpipe.cli prep drr --src "$src" --out "$out" "$@"
