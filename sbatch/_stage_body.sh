# shellcheck shell=bash
# The body every training stage script shares; sourced (never executed) after the script's literal #SBATCH
# headers:
#
#     source "${CTPIPE_REPO:-${SLURM_SUBMIT_DIR:-.}}/sbatch/_stage_body.sh"
#     ctpipe_train_stage stage1_64 "$(ctpipe_shards XRAY2CT_SHARDS xray2ct)" "$@"
#
# It sources sbatch/_site.sh (site resources, venv, DDP rendezvous) and provides:
#   ctpipe_shards VAR FAMILY        the shard folder: $VAR, else $CTPIPE_DATA/FAMILY/shards (default data/...)
#   ctpipe_train_stage STAGE SHARDS [OVERRIDES...]
#                                   train STAGE in $CTPIPE_RUNS/STAGE/$RUN_NAME on every task of the job (srun).
#   ctpipe_resubmit SCRIPT [ARGS...] submit SCRIPT again with this job's sbatch options (time, partition, ...).
#
# Environment read by ctpipe_train_stage (all optional):
#   RUN_NAME   run folder name (default "default"); the folder, not the job id, identifies the run.
#   CONFIG     config file for the FIRST start (default: the packaged ctpipe/configs/STAGE.json).
#   PRESET     a named override set for the first start, e.g. PRESET=cpu-tiny (see `ctpipe presets`).
# A run folder that holds config.json is a resume (requeue, preemption, next segment, resubmission): the job
# then trains from that saved config.json, and CONFIG/PRESET are not read again.  Overrides given as script
# arguments are applied on every start (give the same ones, or none, when resuming).

if ! (return 0 2>/dev/null); then
    echo "sbatch/_stage_body.sh is meant to be sourced by a stage script" >&2
    exit 2
fi

# shellcheck source=sbatch/_site.sh
source "${CTPIPE_REPO:-${SLURM_SUBMIT_DIR:-.}}/sbatch/_site.sh"
ctpipe_site_summary

ctpipe_shards() {
    local var="$1" family="$2"
    echo "${!var:-${CTPIPE_DATA:-data}/$family/shards}"
}

ctpipe_train_stage() {
    local stage="$1" shards="$2"
    shift 2
    local run_dir="${CTPIPE_RUNS:-runs}/$stage/${RUN_NAME:-default}" first=()
    export CTPIPE_RUN_DIR="$run_dir" # the caller reads it (fbp_unet.sh: the segment status)
    if [[ -f "$run_dir/config.json" ]]; then
        echo "$stage: resuming ${run_dir} from its saved config.json (CONFIG/PRESET are not re-read)"
    else
        if [[ -n "${CONFIG:-}" && ! -f "$CONFIG" ]]; then
            _ctpipe_err "CONFIG=$CONFIG: no such file (give a config JSON, or unset CONFIG for the packaged one)"
            return 2
        fi
        if [[ -n "${CONFIG:-}" ]]; then first=(--config "$CONFIG"); fi
        if [[ -n "${PRESET:-}" ]]; then first+=(--preset "$PRESET"); fi
    fi
    echo "$stage: run ${run_dir}, shards ${shards}, restart ${SLURM_RESTART_COUNT:-0}," \
        "${first[*]:-resume}, overrides: $*"
    # Overrides come right after the stage (before the options): `ctpipe train` takes them as one positional list.
    ctpipe_srun python -m ctpipe.cli train "$stage" "data.root=$shards" "$@" "${first[@]}" --run-dir "$run_dir" ||
        ctpipe_requeue_if_preempted $?
}

# `scontrol show job -o` field KEY of this job ("" when absent or (null)).
_ctpipe_job_field() {
    local info="$1" key="$2" word
    for word in $info; do
        if [[ "$word" == "$key="* ]]; then
            word="${word#"$key="}"
            [[ "$word" == "(null)" ]] || echo "$word"
            return 0
        fi
    done
}

# The sbatch options this job was submitted with, read back from slurmctld, one per line: the time limit,
# partition, account, QOS, job name, nodes, tasks per node, CPUs per task and the GPU request (TresPerNode).
ctpipe_job_sbatch_options() {
    local info value per_node
    info="$(scontrol show job -o "${SLURM_JOB_ID:?not inside a job}")"
    value="$(_ctpipe_job_field "$info" TimeLimit)" && [[ -n "$value" && "$value" != UNLIMITED ]] && echo "--time=$value"
    value="$(_ctpipe_job_field "$info" Partition)" && [[ -n "$value" ]] && echo "--partition=$value"
    value="$(_ctpipe_job_field "$info" Account)" && [[ -n "$value" ]] && echo "--account=$value"
    value="$(_ctpipe_job_field "$info" QOS)" && [[ -n "$value" && "$value" != normal ]] && echo "--qos=$value"
    value="$(_ctpipe_job_field "$info" JobName)" && [[ -n "$value" ]] && echo "--job-name=$value"
    value="$(_ctpipe_job_field "$info" TresPerNode)" && [[ -n "$value" ]] && echo "--gres=${value#gres:}"
    per_node="${SLURM_NTASKS_PER_NODE:-1}"
    echo "--nodes=${SLURM_JOB_NUM_NODES:-1}"
    echo "--ntasks-per-node=${per_node%%(*}"
    [[ -z "${SLURM_CPUS_PER_TASK:-}" ]] || echo "--cpus-per-task=$SLURM_CPUS_PER_TASK"
    return 0
}

# Submit SCRIPT again (same arguments, same sbatch options as this job), to start once this job has ended.
ctpipe_resubmit() {
    local script="$1" opts=()
    shift
    mapfile -t opts < <(ctpipe_job_sbatch_options)
    echo "ctpipe: resubmitting $script with ${opts[*]} (after job $SLURM_JOB_ID)"
    sbatch "${opts[@]}" --dependency="afterany:$SLURM_JOB_ID" --kill-on-invalid-dep=yes "$script" "$@"
}
