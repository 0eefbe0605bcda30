#!/bin/bash
# Stage pix2pix_phase: pix2pix (U-Net G + PatchGAN D) from time-averaged CT slices to phase 0, on a nifti_pairs
# shard set (sbatch/prep_nifti_pairs.sh); DDP over every task of the job (one task per GPU; BatchNorm becomes
# SyncBatchNorm on GPUs; the packaged config uses instance norm).  From the repository root:
#
#     mkdir -p logs                                      # SLURM does not create the log folder (the job fails)
#     sbatch sbatch/pix2pix_phase.sh                     # data/phases/shards -> runs/pix2pix_phase/default
#     sbatch --kill-on-invalid-dep=yes --dependency=afterok:<prep job id> sbatch/pix2pix_phase.sh
#     RUN_NAME=l1_100 sbatch sbatch/pix2pix_phase.sh loss.lambda_l1=100 optim.lr=2e-4   # arguments: overrides
#     source sbatch/_site.sh; mapfile -t site < <(ctpipe_sbatch_args 1)
#     sbatch "${site[@]}" sbatch/pix2pix_phase.sh                                     # 1 GPU, site's GPU syntax
#
# Environment (optional): RUN_NAME names the run folder $CTPIPE_RUNS/pix2pix_phase/$RUN_NAME (default "default");
# the folder, not the job id, identifies the run, so a requeued job resumes from checkpoints/latest.pt with both
# optimizers and both schedulers (no --epoch_count).  PHASE_SHARDS: the shard set (default
# $CTPIPE_DATA/phases/shards).  Site settings (partition, venv, modules, ...): sbatch/_site.sh and sbatch/README.md.
#
# Settings (the stage's defaults, the seeds' settings): unet_512 on 512^2 slices, instance norm,
# batch 4, lambda_L1 50, Adam lr 1e-4 (beta1 0.5) for G and D, 100 constant + 100 linear-decay epochs,
# epoch_NNN.pt every 5 epochs.  After the last epoch the job writes eval/{validation,test}/{pix2pix,identity}.csv
# (one row per volume).  Inference: ctpipe infer pix2pix --checkpoint RUN/checkpoints/best.pt --input-dir ...
# Preemption: USR2 120 s before the time limit -> the trainer saves latest.pt and exits 3 ->
# ctpipe_requeue_if_preempted requeues this job.  Time: not measured on real data; raise --time if needed
# (a requeue continues where the job stopped).
# CONFIG (another config file) and PRESET (PRESET=cpu-tiny: a tiny CPU model and data fields that run on the
# test cluster, see `ctpipe presets`) apply to the first start only: a requeued, resubmitted or re-run job
# resumes from the run folder's saved config.json.  Shared body: sbatch/_stage_body.sh.
#SBATCH --job-name=pix2pix_phase
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

ctpipe_train_stage pix2pix_phase "$(ctpipe_shards PHASE_SHARDS phases)" "$@"
