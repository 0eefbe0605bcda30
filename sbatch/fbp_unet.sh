#!/bin/bash
# Experiment 4 (stage fbp_unet): frozen FBP (Hann 0.641, or experiment 1's learned window) + a trained UNet with
# the composite loss, on a LoDoPaB shard set; DDP over every task of the job (one task per GPU).  From the
# repository root:
#
#     mkdir -p logs                                      # SLURM does not create the log folder (the job fails)
#     sbatch sbatch/fbp_unet.sh                          # one segment (5 epochs) of runs/fbp_unet/default
#     sbatch sbatch/fbp_unet.sh                          # ... the next segment resumes the same run folder
#     RESUBMIT=1 sbatch sbatch/fbp_unet.sh               # each segment submits the next one until all 25 are done
#     WINDOW_CHECKPOINT=runs/fbp_window/default/checkpoints/best.pt RUN_NAME=learned sbatch sbatch/fbp_unet.sh
#     RUN_NAME=l1only sbatch sbatch/fbp_unet.sh loss.ms_ssim=0 loss.edge=0        # arguments: config overrides
#     source sbatch/_site.sh; mapfile -t site < <(ctpipe_sbatch_args 1)
#     sbatch "${site[@]}" sbatch/fbp_unet.sh                                        # 1 GPU, site's GPU syntax
#
# Environment (optional): RUN_NAME names the run folder $CTPIPE_RUNS/fbp_unet/$RUN_NAME (default "default"); the
# folder, not the job id, identifies the run, so a requeued job or the next segment resumes its latest.pt.
# LODOPAB_SHARDS: the shard set (default $CTPIPE_DATA/lodopab/shards).  WINDOW_CHECKPOINT: an experiment-1
# checkpoint whose learned window the frozen FBP uses (default: Hann 0.641).  RESUBMIT=1: after a segment ends
# (status segment_done), submit this script again with the same arguments and site flags.
# Site settings (partition, venv, modules, ...): sbatch/_site.sh and sbatch/README.md.
#
# Segments: the stage trains 25 epochs in segments of 5 (train.epochs, train.segment_epochs): each job trains
# one segment and exits 0; the final evaluation (fbp_hann, learned_window, fbp_unet) runs in the job that
# completes the run.  Preemption: USR2 120 s before the time limit -> the trainer saves latest.pt and exits 3 ->
# ctpipe_requeue_if_preempted requeues this job, which resumes mid-segment.
# Time: not measured on the full data; --time leaves room for one 5-epoch segment on one GPU (raise it otherwise).
# CONFIG (another config file) and PRESET (PRESET=cpu-tiny: a tiny CPU model and data fields that run on the
# test cluster, see `ctpipe presets`) apply to the first start only: a requeued, resubmitted or re-run job
# resumes from the run folder's saved config.json.  Shared body: sbatch/_stage_body.sh.
#SBATCH --job-name=fbp_unet
#SBATCH --time=08:00:00
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

extra=()
if [[ -n "${WINDOW_CHECKPOINT:-}" ]]; then extra+=("model.window_checkpoint=${WINDOW_CHECKPOINT}"); fi
ctpipe_train_stage fbp_unet "$(ctpipe_shards LODOPAB_SHARDS lodopab)" "${extra[@]}" "$@"

# The status of the segment that just ended: the last fit_end event of the run folder.
status="$(python - "$CTPIPE_RUN_DIR/events.jsonl" <<'PY'
import json, sys
ends = [e for e in map(json.loads, open(sys.argv[1])) if e.get("event") == "fit_end"]
print(ends[-1]["status"] if ends else "unknown")
PY
)"
echo "fbp_unet: ${CTPIPE_RUN_DIR} ${status}"
if [[ "$status" == segment_done && "${RESUBMIT:-0}" == 1 ]]; then
    ctpipe_resubmit "$CTPIPE_REPO/sbatch/fbp_unet.sh" "$@"
fi
