#!/bin/bash
# Experiment 1 (stage fbp_window): learn the FBP window on a LoDoPaB shard set, DDP over every task of the job
# (one task per GPU; gloo on CPU-only nodes).  From the repository root:
#
#     mkdir -p logs                                      # SLURM does not create the log folder (the job fails)
#     sbatch sbatch/fbp_window.sh                        # defaults: data/lodopab/shards -> runs/fbp_window/default
#     RUN_NAME=lr3e-3 sbatch sbatch/fbp_window.sh optim.lr=3e-3 train.epochs=40    # arguments: config overrides
#     sbatch --kill-on-invalid-dep=yes --dependency=afterok:<prep job id> sbatch/fbp_window.sh                 # after sbatch/prep_lodopab.sh
#     source sbatch/_site.sh; mapfile -t site < <(ctpipe_sbatch_args 4)
#     sbatch "${site[@]}" --ntasks-per-node=4 sbatch/fbp_window.sh                  # 4 GPUs, site's GPU syntax
#
# Environment (optional): RUN_NAME names the run folder $CTPIPE_RUNS/fbp_window/$RUN_NAME (default "default").
# The folder, not the job id, identifies the run: a requeued job (or a resubmission with the same RUN_NAME)
# resumes from its checkpoints/latest.pt.  LODOPAB_SHARDS: the shard set (default $CTPIPE_DATA/lodopab/shards).
# Site settings (partition, venv, modules, ...): sbatch/_site.sh and sbatch/README.md.
#
# Preemption: SLURM sends USR2 to the training tasks 120 s before the time limit (scancel --signal=USR2 does the
# same); the trainer finishes its step, writes latest.pt and exits 3; ctpipe_requeue_if_preempted requeues the
# job.  `scontrol requeue` (SIGTERM) also makes the trainer save before it exits; SLURM requeues the job itself.
# CONFIG (another config file) and PRESET (PRESET=cpu-tiny: a tiny CPU model and data fields that run on the
# test cluster, see `ctpipe presets`) apply to the first start only: a requeued, resubmitted or re-run job
# resumes from the run folder's saved config.json.  Shared body: sbatch/_stage_body.sh.
#SBATCH --job-name=fbp_window
#SBATCH --time=04:00:00
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

ctpipe_train_stage fbp_window "$(ctpipe_shards LODOPAB_SHARDS lodopab)" "$@"
