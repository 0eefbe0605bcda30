#!/bin/bash
# Stage refine_256: a FROZEN stage-1 model's 64^3 output refined to 256^3 (ResidualUpsampler3D), multi-scale loss.
# DDP over every task of the job (one task per GPU, srun).  From the repository root:
#
#     mkdir -p logs                                      # SLURM does not create the log folder (the job fails)
#     source sbatch/_site.sh; mapfile -t site < <(ctpipe_sbatch_args 4)
#     sbatch "${site[@]}" --ntasks-per-node=4 sbatch/refine_256.sh          # 4 GPUs, the site's GPU syntax
#     RUN_NAME=lr3e-4 sbatch "${site[@]}" sbatch/refine_256.sh optim.lr=3e-4  # arguments: config overrides
#     CONFIG=ctpipe/configs/refine_256_seeds.json RUN_NAME=seeds sbatch "${site[@]}" sbatch/refine_256.sh
#
# Environment (optional): RUN_NAME names the run folder $CTPIPE_RUNS/refine_256/$RUN_NAME (default "default"); the
# folder, not the job id, identifies the run, so a requeued job resumes its latest.pt.  XRAY2CT_SHARDS: the shard
# set (default $CTPIPE_DATA/xray2ct/shards).  CONFIG: another config file (default ctpipe/configs/refine_256.json).
# STAGE1_CHECKPOINT: the stage-1 weights (default $CTPIPE_RUNS/stage1_64/default/checkpoints/best.pt).
# Site settings (partition, venv, modules, ...): sbatch/_site.sh and sbatch/README.md.
#
# Preemption: USR2 120 s before the time limit -> the trainer saves latest.pt and exits 3 ->
# ctpipe_requeue_if_preempted requeues this job, which resumes exactly where it stopped.
# Time: not measured on real data (no GPU was available while writing this); raise --time if needed, a
# requeued job continues anyway.
# CONFIG (another config file) and PRESET (PRESET=cpu-tiny: a tiny CPU model and data fields that run on the
# test cluster, see `ctpipe presets`) apply to the first start only: a requeued, resubmitted or re-run job
# resumes from the run folder's saved config.json.  Shared body: sbatch/_stage_body.sh.
#SBATCH --job-name=refine_256
#SBATCH --time=24:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --requeue
#SBATCH --signal=USR2@120
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
# shellcheck source=sbatch/_stage_body.sh
source "${CTPIPE_REPO:-${SLURM_SUBMIT_DIR:-.}}/sbatch/_stage_body.sh"

ctpipe_train_stage refine_256 "$(ctpipe_shards XRAY2CT_SHARDS xray2ct)" \
    "stage1_checkpoint=${STAGE1_CHECKPOINT:-${CTPIPE_RUNS:-runs}/stage1_64/default/checkpoints/best.pt}" "$@"
