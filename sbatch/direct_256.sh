#!/bin/bash
# Issue 7 (stage direct_256): dual-view X-rays -> 256^3 CT end to end (Direct256), gradient checkpointing + bf16.
# DDP over every task of the job (one task per GPU, srun).  From the repository root:
#
#     mkdir -p logs                                      # SLURM does not create the log folder (the job fails)
#     source sbatch/_site.sh; mapfile -t site < <(ctpipe_sbatch_args 4)
#     sbatch "${site[@]}" --ntasks-per-node=4 sbatch/direct_256.sh          # 4 GPUs, the site's GPU syntax
#     RUN_NAME=lr3e-4 sbatch "${site[@]}" sbatch/direct_256.sh optim.lr=3e-4  # arguments: config overrides
#     STAGE1_CHECKPOINT=runs/stage1_64/default/checkpoints/best.pt RUN_NAME=init sbatch "${site[@]}" sbatch/direct_256.sh
#
# Environment (optional): RUN_NAME names the run folder $CTPIPE_RUNS/direct_256/$RUN_NAME (default "default"); the
# folder, not the job id, identifies the run, so a requeued job resumes its latest.pt.  XRAY2CT_SHARDS: the shard
# set (default $CTPIPE_DATA/xray2ct/shards).  CONFIG: another config file (default jobs/configs/direct_256.json).
# STAGE1_CHECKPOINT: initialise the encoder/transformer from these stage-1 weights (default: random init).
# Site settings (partition, venv, modules, ...): sbatch/_site.sh and sbatch/README.md.
#
# Preemption: USR2 120 s before the time limit -> the trainer saves latest.pt and exits 3 ->
# ctpipe_requeue_if_preempted requeues this job, which resumes exactly where it stopped.
# Time: not measured on real data (no GPU was available while writing this); raise --time if needed, a
# requeued job continues anyway.
#SBATCH --job-name=direct_256
#SBATCH --time=48:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --requeue
#SBATCH --signal=USR2@120
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
# shellcheck source=sbatch/_site.sh
source "${CTPIPE_REPO:-${SLURM_SUBMIT_DIR:-.}}/sbatch/_site.sh"
ctpipe_site_summary

run_dir="${CTPIPE_RUNS:-runs}/direct_256/${RUN_NAME:-default}"
shards="${XRAY2CT_SHARDS:-${CTPIPE_DATA:-data}/xray2ct/shards}"
config="${CONFIG:-$CTPIPE_REPO/jobs/configs/direct_256.json}"
overrides=("data.root=${shards}")
if [[ -n "${STAGE1_CHECKPOINT:-}" ]]; then overrides+=("init_from_stage1=${STAGE1_CHECKPOINT}"); fi
echo "direct_256: run ${run_dir}, config ${config}, restart ${SLURM_RESTART_COUNT:-0}, overrides: ${overrides[*]} $*"

# Overrides come right after the stage (before --run-dir): `ctpipe train` takes them as one positional list.
ctpipe_srun python -m ctpipe.cli train direct_256 "${overrides[@]}" "$@" --config "$config" --run-dir "$run_dir" ||
    ctpipe_requeue_if_preempted $?
