# shellcheck shell=bash
# ctpipe site settings: sourced (never executed) by every sbatch/ stage script, and by anything that submits:
#
#     source "${CTPIPE_REPO:-${SLURM_SUBMIT_DIR:-.}}/sbatch/_site.sh"
#
# (inside a job the script runs from a copy in slurmd's spool folder, so it cannot find this file from its
# own path: submit from the repository root, or export CTPIPE_REPO.)
#
# Settings come from, in this order of precedence: the environment, the site file ($CTPIPE_SITE_FILE, default
# sbatch/site.env when it exists; every key is documented in sbatch/site.example.env), then the defaults below.
# It then loads modules, puts the virtual environment first on PATH and, inside a job, exports what DDP needs
# (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, ...).  Per-task RANK/LOCAL_RANK come from `ctpipe_srun`.
# Functions: ctpipe_gpu_flag N, ctpipe_sbatch_args [N_GPUS], ctpipe_srun CMD..., ctpipe_requeue_if_preempted RC,
# ctpipe_site_summary.

if ! (return 0 2>/dev/null); then
    echo "sbatch/_site.sh is meant to be sourced: source sbatch/_site.sh" >&2
    exit 2
fi

CTPIPE_SITE_KEYS=(CTPIPE_PARTITION CTPIPE_ACCOUNT CTPIPE_QOS CTPIPE_GPU_FLAG CTPIPE_GPU_TYPE CTPIPE_MODULES
    CTPIPE_MODULE_PURGE CTPIPE_VENV CTPIPE_MASTER_PORT_BASE CTPIPE_DATA CTPIPE_RUNS CTPIPE_RESULTS)

_ctpipe_err() { printf 'ctpipe site: error: %s\n' "$*" >&2; }

_ctpipe_is_site_key() {
    local key
    for key in "${CTPIPE_SITE_KEYS[@]}"; do [[ "$key" == "$1" ]] && return 0; done
    return 1
}

# Read KEY=VALUE lines (comments, blank lines and a leading `export ` allowed; one pair of quotes stripped).
# The file is parsed, not executed.
_ctpipe_load_site_file() {
    local file="$1" line key value n=0
    [[ -r "$file" ]] || { _ctpipe_err "site file $file is not readable (set CTPIPE_SITE_FILE or create it)"; return 1; }
    while IFS= read -r line || [[ -n "$line" ]]; do
        n=$((n + 1))
        line="${line#"${line%%[![:space:]]*}"}"
        [[ -z "$line" || "$line" == \#* ]] && continue
        line="${line#export }"
        if [[ ! "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
            _ctpipe_err "$file:$n: expected KEY=VALUE, got: $line"
            return 1
        fi
        key="${BASH_REMATCH[1]}"
        value="${BASH_REMATCH[2]}"
        if ! _ctpipe_is_site_key "$key"; then
            _ctpipe_err "$file:$n: unknown key $key (known: ${CTPIPE_SITE_KEYS[*]}; see sbatch/site.example.env)"
            return 1
        fi
        if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then value="${BASH_REMATCH[1]}"; fi
        # An empty value means "use the default"; a key already in the environment wins over the file.
        [[ -z "$value" || -n "${!key+set}" ]] || export "$key=$value"
    done <"$file"
}

_ctpipe_apply_defaults() {
    export CTPIPE_PARTITION="${CTPIPE_PARTITION:-}"
    export CTPIPE_ACCOUNT="${CTPIPE_ACCOUNT:-}"
    export CTPIPE_QOS="${CTPIPE_QOS:-}"
    export CTPIPE_GPU_FLAG="${CTPIPE_GPU_FLAG:-gres}"
    export CTPIPE_GPU_TYPE="${CTPIPE_GPU_TYPE:-}"
    export CTPIPE_MODULES="${CTPIPE_MODULES:-}"
    export CTPIPE_MODULE_PURGE="${CTPIPE_MODULE_PURGE:-0}"
    export CTPIPE_VENV="${CTPIPE_VENV:-$CTPIPE_REPO/.venv}"
    export CTPIPE_MASTER_PORT_BASE="${CTPIPE_MASTER_PORT_BASE:-20000}"
    case "$CTPIPE_GPU_FLAG" in
        gres | gpus-per-node | gpus | none) ;;
        *)
            _ctpipe_err "CTPIPE_GPU_FLAG=$CTPIPE_GPU_FLAG: use gres (--gres=gpu:N), gpus-per-node (--gpus-per-node=N), gpus (--gpus=N) or none"
            return 1
            ;;
    esac
    if [[ ! "$CTPIPE_MASTER_PORT_BASE" =~ ^[0-9]+$ ]] || ((CTPIPE_MASTER_PORT_BASE < 1024 || CTPIPE_MASTER_PORT_BASE > 45535)); then
        _ctpipe_err "CTPIPE_MASTER_PORT_BASE=$CTPIPE_MASTER_PORT_BASE: use a number in 1024..45535"
        return 1
    fi
    # sbatch itself reads these, so a driver that sources this file and then calls sbatch gets them.
    if [[ -n "$CTPIPE_PARTITION" ]]; then export SBATCH_PARTITION="$CTPIPE_PARTITION"; fi
    if [[ -n "$CTPIPE_ACCOUNT" ]]; then export SBATCH_ACCOUNT="$CTPIPE_ACCOUNT"; fi
    if [[ -n "$CTPIPE_QOS" ]]; then export SBATCH_QOS="$CTPIPE_QOS"; fi
    return 0
}

_ctpipe_load_modules() {
    [[ -z "$CTPIPE_MODULES" && "$CTPIPE_MODULE_PURGE" != 1 ]] && return 0
    if ! type module >/dev/null 2>&1; then
        _ctpipe_err "CTPIPE_MODULES='$CTPIPE_MODULES' is set but the 'module' command is missing (load Lmod/Environment Modules or unset it)"
        return 1
    fi
    [[ "$CTPIPE_MODULE_PURGE" == 1 ]] && module purge
    local m
    for m in $CTPIPE_MODULES; do
        module load "$m" || { _ctpipe_err "module load $m failed (check CTPIPE_MODULES)"; return 1; }
    done
}

_ctpipe_activate_venv() {
    if [[ ! -x "$CTPIPE_VENV/bin/python" ]]; then
        _ctpipe_err "no Python at $CTPIPE_VENV/bin/python: create it (python -m venv $CTPIPE_VENV && pip install -e $CTPIPE_REPO) or set CTPIPE_VENV"
        return 1
    fi
    export VIRTUAL_ENV="$CTPIPE_VENV"
    case ":$PATH:" in *":$CTPIPE_VENV/bin:"*) ;; *) export PATH="$CTPIPE_VENV/bin:$PATH" ;; esac
    export CTPIPE_PYTHON="$CTPIPE_VENV/bin/python"
}

# Inside an allocation: the rendezvous for torch.distributed (env:// init), the same on every node.
_ctpipe_export_distributed() {
    [[ -n "${SLURM_JOB_ID:-}" ]] || return 0
    local first=""
    if [[ -n "${SLURM_JOB_NODELIST:-}" ]] && command -v scontrol >/dev/null 2>&1; then
        first="$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n 1)"
    fi
    export MASTER_ADDR="${first:-${SLURMD_NODENAME:-$(hostname -s)}}"
    export MASTER_PORT="$((CTPIPE_MASTER_PORT_BASE + SLURM_JOB_ID % 20000))"
    local nodes="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
    local per_node="${SLURM_NTASKS_PER_NODE:-1}"
    per_node="${per_node%%(*}" # heterogeneous counts look like 2(x3): take the count
    export NNODES="$nodes"
    export LOCAL_WORLD_SIZE="$per_node"
    export WORLD_SIZE="${SLURM_NTASKS:-$((nodes * per_node))}"
    export NODE_RANK="${SLURM_NODEID:-0}"
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
    # RANK/LOCAL_RANK are per task (ctpipe_srun sets them); one leaked from the submitting shell would be wrong.
    unset RANK LOCAL_RANK
}

# The sbatch flag requesting N GPUs per node in this site's syntax (nothing for N=0 or CTPIPE_GPU_FLAG=none).
ctpipe_gpu_flag() {
    local n="${1:-0}" spec
    [[ "$n" =~ ^[0-9]+$ ]] || { _ctpipe_err "ctpipe_gpu_flag: expected a GPU count, got '$n'"; return 1; }
    ((n > 0)) || return 0
    spec="${CTPIPE_GPU_TYPE:+$CTPIPE_GPU_TYPE:}$n"
    case "$CTPIPE_GPU_FLAG" in
        gres) echo "--gres=gpu:$spec" ;;
        gpus-per-node) echo "--gpus-per-node=$spec" ;;
        gpus) echo "--gpus=$spec" ;;
        none) ;;
    esac
}

# Site flags for the sbatch command line, one per line: mapfile -t a < <(ctpipe_sbatch_args 4); sbatch "${a[@]}" x.sh
ctpipe_sbatch_args() {
    [[ -n "$CTPIPE_PARTITION" ]] && echo "--partition=$CTPIPE_PARTITION"
    [[ -n "$CTPIPE_ACCOUNT" ]] && echo "--account=$CTPIPE_ACCOUNT"
    [[ -n "$CTPIPE_QOS" ]] && echo "--qos=$CTPIPE_QOS"
    ctpipe_gpu_flag "${1:-0}"
}

# srun CMD on every task of the allocation with RANK and LOCAL_RANK exported from SLURM_PROCID/SLURM_LOCALID.
# Extra srun options go before `--`: ctpipe_srun --cpu-bind=none -- python train.py
ctpipe_srun() {
    local opts=()
    if [[ "${1:-}" == -* && " $* " == *" -- "* ]]; then
        while [[ "$1" != "--" ]]; do opts+=("$1"); shift; done
        shift
    fi
    # shellcheck disable=SC2016  # expanded by the task's shell, not here
    srun "${opts[@]}" bash -c 'export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID"; exec "$@"' ctpipe-task "$@"
}

# Preemption convention: the trainer exits with CTPIPE_PREEMPT_EXIT_CODE (default 3) after writing its checkpoint
# when it gets SIGUSR2/SIGTERM (#SBATCH --signal=USR2@120 signals the srun steps).  Use
#     ctpipe_srun python -m ctpipe.cli train ... || ctpipe_requeue_if_preempted $?
# On that exit code this requeues the job (needs #SBATCH --requeue) and ends the script with 0; any other
# non-zero code is returned unchanged (so `set -e` fails the job).
ctpipe_requeue_if_preempted() {
    local rc="${1:?usage: ctpipe_requeue_if_preempted EXIT_CODE}"
    if [[ "$rc" == "${CTPIPE_PREEMPT_EXIT_CODE:-3}" && -n "${SLURM_JOB_ID:-}" ]]; then
        echo "ctpipe: preempted (exit $rc, restart ${SLURM_RESTART_COUNT:-0}): requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID" || { _ctpipe_err "scontrol requeue $SLURM_JOB_ID failed (submit with --requeue)"; exit "$rc"; }
        exit 0
    fi
    return "$rc"
}

ctpipe_site_summary() {
    echo "ctpipe site: repo=$CTPIPE_REPO site_file=${CTPIPE_SITE_FILE:-none} venv=$CTPIPE_VENV" \
        "partition=${CTPIPE_PARTITION:-<default>} account=${CTPIPE_ACCOUNT:-<none>} gpu_flag=$CTPIPE_GPU_FLAG" \
        "modules=${CTPIPE_MODULES:-<none>}"
    [[ -z "${SLURM_JOB_ID:-}" ]] ||
        echo "ctpipe site: job=$SLURM_JOB_ID MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT WORLD_SIZE=$WORLD_SIZE NNODES=$NNODES"
}

_ctpipe_site_main() {
    local here
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    export CTPIPE_REPO="${CTPIPE_REPO:-$(dirname "$here")}"
    if [[ -z "${CTPIPE_SITE_FILE:-}" && -f "$here/site.env" ]]; then
        CTPIPE_SITE_FILE="$here/site.env"
    fi
    if [[ -n "${CTPIPE_SITE_FILE:-}" ]]; then
        export CTPIPE_SITE_FILE
        _ctpipe_load_site_file "$CTPIPE_SITE_FILE" || return 1
    fi
    _ctpipe_apply_defaults || return 1
    _ctpipe_load_modules || return 1
    _ctpipe_activate_venv || return 1
    _ctpipe_export_distributed
}

_ctpipe_site_main || return 1
