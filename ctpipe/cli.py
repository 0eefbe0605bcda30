"""The ``ctpipe`` command: prep | train | submit | aggregate | demo | infer."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from ctpipe.checkpoint import CheckpointError
from ctpipe.demo_common import follow_jobs
from ctpipe.distributed import DistEnv, pick_device
from ctpipe.errors import DiskFullError, UserError, is_disk_full
from ctpipe.intensity import PIX2PIX_HU_WINDOW
from ctpipe.launch import Resources, submit_training, wait_all
from ctpipe.pipeline_families import FAMILIES, SynthSpec
from ctpipe.presets import describe as describe_presets
from ctpipe.presets import preset_overrides
from ctpipe.progress import Progress
from ctpipe.summaries import (emit, infer_folder_summary, infer_volume_summary, infer_xray2ct_summary, prep_summary,
                              synth_files_summary, synth_lodopab_summary)

_PACKAGE_DIR = Path(__file__).resolve().parent


def _array_task(args: argparse.Namespace) -> tuple[int, int]:
    """Task index/count from the flags, else from a SLURM array's environment, else (0, 1)."""
    index = args.task_index if args.task_index is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", 0))
    count = args.n_tasks if args.n_tasks is not None else int(os.environ.get("SLURM_ARRAY_TASK_COUNT", 1))
    if not 0 <= index < count:
        raise SystemExit(f"ctpipe prep: task index {index} is outside 0..{count - 1}; check --task-index/--n-tasks")
    return index, count


# ---- prep ------------------------------------------------------------------------------------------
def _prep_lodopab(args: argparse.Namespace) -> None:
    # lazy: h5py/nibabel/scipy cost ~0.1 s at CLI start; only this command needs them
    from ctpipe.data.lodopab import prep_lodopab

    index, count = _array_task(args)
    result = prep_lodopab(Path(args.src), Path(args.out), parts=tuple(args.parts.split(",")),
                          task_index=index, n_tasks=count)
    emit(prep_summary("lodopab", result), args.json)


def _prep_synth_lodopab(args: argparse.Namespace) -> None:
    # lazy: h5py/nibabel/scipy cost ~0.1 s at CLI start; only this command needs them
    from ctpipe.data.synthetic import write_synthetic_lodopab

    emit(synth_lodopab_summary(write_synthetic_lodopab(Path(args.out), n=args.n, size=args.size, seed=args.seed)),
         args.json)


def _add_array_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task-index", type=int, default=None, help="array task (default: $SLURM_ARRAY_TASK_ID or 0)")
    parser.add_argument("--n-tasks", type=int, default=None, help="array size (default: $SLURM_ARRAY_TASK_COUNT or 1)")


def _add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="end with one JSON object on stdout instead of a summary")


def _add_prep(sub: argparse._SubParsersAction) -> None:
    prep = sub.add_parser("prep", help="convert raw data into HDF5 shard sets, or synthesize raw data")
    kinds = prep.add_subparsers(dest="kind", required=True)
    p = kinds.add_parser("lodopab", help="LoDoPaB-CT raw HDF5 files -> shard set")
    p.add_argument("--src", required=True, help="folder with observation_*/ground_truth_* files")
    p.add_argument("--out", required=True, help="output shard-set folder")
    p.add_argument("--parts", default="train,validation,test")
    _add_array_flags(p)
    _add_json_flag(p)
    p.set_defaults(func=_prep_lodopab)
    p = kinds.add_parser("synth-lodopab", help="synthetic phantoms written in the raw LoDoPaB file layout")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, required=True, help="number of slices over all parts")
    p.add_argument("--size", choices=("full", "small"), default="small")
    p.add_argument("--seed", type=int, default=0)
    _add_json_flag(p)
    p.set_defaults(func=_prep_synth_lodopab)
    _add_prep_phases(kinds)
    _add_prep_xray2ct(kinds)


# ---- prep: paired NIfTI phases (pix2pix) ---------------------------------------------------------------
class _HUWindowAction(argparse.Action):
    """``--hu-window LOW,HIGH`` (or ``LOW HIGH``) -> ``(low, high)`` floats with low < high."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        given = " ".join(values) if isinstance(values, list) else str(values)
        parts = given.replace(",", " ").split()
        try:
            low, high = (float(p) for p in parts)
        except ValueError:
            parser.error(f"{option_string} {given!r}: give two numbers LOW,HIGH in HU, e.g. --hu-window -1024,3071")
        if not high > low:
            parser.error(f"{option_string} {low:g},{high:g}: HIGH must be greater than LOW, e.g. -1024,3071")
        setattr(namespace, self.dest, (low, high))


# options whose value may start with '-' and hold a comma (argparse would take "-1024,3071" for an option)
_SIGNED_LIST_OPTIONS = ("--hu-window",)


def _attach_signed_lists(argv: Sequence[str]) -> list[str]:
    """``--hu-window -1024,3071`` -> ``--hu-window=-1024,3071``, which argparse reads as the option's value."""
    out, i = list(argv), 0
    while i < len(out) - 1:
        if out[i] in _SIGNED_LIST_OPTIONS and out[i + 1].startswith("-") and "," in out[i + 1]:
            out[i:i + 2] = [f"{out[i]}={out[i + 1]}"]
        i += 1
    return out


def _prep_nifti_pairs(args: argparse.Namespace) -> None:
    # lazy: h5py/nibabel/scipy cost ~0.1 s at CLI start; only this command needs them
    from ctpipe.data.nifti_pairs import prep_nifti_pairs

    index, count = _array_task(args)
    fractions = tuple(float(f) for f in args.split_fractions.split(","))
    size = None if args.size.lower() == "native" else int(args.size)
    result = prep_nifti_pairs(Path(args.src), Path(args.out), size=size, hu_window=tuple(args.hu_window),
                              task_index=index, n_tasks=count, split_fractions=fractions,
                              affine_atol=args.affine_atol)
    emit(prep_summary("nifti-pairs", result), args.json)


def _prep_synth_phases(args: argparse.Namespace) -> None:
    # lazy: h5py/nibabel/scipy cost ~0.1 s at CLI start; only this command needs them
    from ctpipe.data.synthetic_phases import write_synthetic_phases

    pairs = write_synthetic_phases(Path(args.out), args.n, size=args.size, n_slices=args.n_slices,
                                   n_phases=args.n_phases, seed=args.seed, subset=args.subset,
                                   oversample=args.oversample)
    emit(synth_files_summary("synth-phases", Path(args.out), [f for pair in pairs for f in pair],
                             f"ctpipe prep nifti-pairs --src {args.out} --out SHARDS --size 64"), args.json)


def _add_prep_phases(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("nifti-pairs", help="trainA/trainB (+ testA/testB) NIfTI pairs -> axial-slice shard set")
    p.add_argument("--src", required=True, help="folder with trainA/ trainB/ (and optionally testA/ testB/)")
    p.add_argument("--out", required=True, help="output shard-set folder")
    p.add_argument("--size", default="512", help="slice side after resizing, or 'native' (default 512)")
    p.add_argument("--hu-window", nargs="+", action=_HUWindowAction, default=PIX2PIX_HU_WINDOW, metavar="LOW,HIGH",
                   help="HU window mapped onto [-1, 1], e.g. --hu-window -1024,3071 (the default; "
                        "'-1024 3071' also works)")
    p.add_argument("--split-fractions", default="0.8,0.2",
                   help="train,validation[,test] fractions of the trainA/B patients (testA/B is always test)")
    p.add_argument("--affine-atol", type=float, default=1e-3, help="A/B affine tolerance in mm")
    _add_array_flags(p)
    _add_json_flag(p)
    p.set_defaults(func=_prep_nifti_pairs)
    p = kinds.add_parser("synth-phases", help="synthetic beating-heart CT pairs in the trainA/trainB layout")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, required=True, help="number of patients")
    p.add_argument("--size", type=int, default=64, help="in-plane voxels")
    p.add_argument("--n-slices", type=int, default=16)
    p.add_argument("--n-phases", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", choices=("train", "test"), default="train")
    p.add_argument("--oversample", type=int, default=2,
                   help="sub-voxel samples per axis (partial-volume edges; 1 = point sampling)")
    _add_json_flag(p)
    p.set_defaults(func=_prep_synth_phases)


# ---- prep: CT NIfTI -> dual-view DRR shard sets (X-ray -> CT) --------------------------------------------
def _prep_drr(args: argparse.Namespace) -> None:
    # lazy: h5py/nibabel/scipy cost ~0.1 s at CLI start; only this command needs them
    from ctpipe.data.drr_prep import parse_split_fractions, prep_drr

    index, count = _array_task(args)
    sizes = tuple(int(s) for s in args.volume_sizes.split(","))
    fractions = parse_split_fractions(args.split_fractions)
    result = prep_drr(Path(args.src), Path(args.out), xray_size=args.xray_size, volume_sizes=sizes, task_index=index,
                      n_tasks=count, cone_beam=args.cone_beam, split_fractions=fractions,
                      files_per_shard=args.files_per_shard, device=args.device)
    emit(prep_summary("drr", result), args.json)


def _prep_synth_ct(args: argparse.Namespace) -> None:
    # lazy: h5py/nibabel/scipy cost ~0.1 s at CLI start; only this command needs them
    from ctpipe.data.synthetic_ct import write_synthetic_ct

    paths = write_synthetic_ct(Path(args.out), args.n, size=args.size, spacing_mm=args.spacing_mm, seed=args.seed)
    emit(synth_files_summary("synth-ct", Path(args.out), paths, f"ctpipe prep drr --src {args.out} --out SHARDS"),
         args.json)


def _add_prep_xray2ct(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("drr", help="CT NIfTI files (HU) -> shard set of dual-view DRRs + windowed target volumes")
    p.add_argument("--src", required=True, help="folder with .nii/.nii.gz CTs (patient id = file name)")
    p.add_argument("--out", required=True, help="output shard-set folder")
    p.add_argument("--xray-size", type=int, default=128, help="DRR edge in pixels (the stage-1 network's xray_size)")
    p.add_argument("--volume-sizes", default="64,256", help="comma-separated target edges (volume_64, volume_256)")
    p.add_argument("--cone-beam", action="store_true", help="cone-beam DRRs (X2CT-GAN's 541/949 mm) instead of parallel")
    p.add_argument("--split-fractions", default="0.8,0.1,0.1",
                   help="patient-level TRAIN,VAL[,TEST] fractions (default 0.8,0.1,0.1: validation picks best.pt, "
                        "test is held out)")
    p.add_argument("--files-per-shard", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch device for resampling and DRR rendering (cpu, cuda)")
    _add_array_flags(p)
    _add_json_flag(p)
    p.set_defaults(func=_prep_drr)
    p = kinds.add_parser("synth-ct", help="synthetic chest CT phantoms written as NIfTI files (LPS storage, HU)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, required=True, help="number of volumes (one patient each)")
    p.add_argument("--size", type=int, default=64, help="voxels per side")
    p.add_argument("--spacing-mm", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    _add_json_flag(p)
    p.set_defaults(func=_prep_synth_ct)


# ---- infer -------------------------------------------------------------------------------------------------
def _infer_pix2pix(args: argparse.Namespace) -> None:
    # lazy: the stages pull in h5py, nibabel and pandas (~0.3 s at CLI start); only inference needs them
    from ctpipe.infer_pix2pix import describe, infer_folder, infer_volume
    from ctpipe.stages import get_stage  # lazy: see above

    single, batch = args.input is not None, args.input_dir is not None
    if single == batch:
        raise ValueError("give either --input FILE --out FILE, or --input-dir DIR --out-dir DIR")
    if (single and args.out is None) or (batch and args.out_dir is None):
        raise ValueError("--input needs --out FILE; --input-dir needs --out-dir DIR")
    if single and args.target_dir is not None:
        raise ValueError("--target-dir only goes with --input-dir")
    device = pick_device(args.device, DistEnv())
    trained = get_stage("pix2pix_phase").load_trained(args.checkpoint, device, args.data_root)
    window, size = trained.prep.window, trained.prep.size
    print(f"generator from {trained.checkpoint}; prep window {window} HU, slice size {size or 'native'}",
          file=sys.stderr if args.json else sys.stdout)
    if single:
        with Progress(1, "inference", "volumes"):
            out = infer_volume(trained.generator, args.input, args.out, window, size, device, args.batch_size)
        emit(infer_volume_summary(out), args.json)
        return
    result = infer_folder(trained.generator, args.input_dir, args.out_dir, window, size, device, args.batch_size,
                          args.target_dir)
    emit(infer_folder_summary(result, Path(args.out_dir), describe(result)), args.json)


def _add_infer_pix2pix(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("pix2pix", help="time-averaged CT volume(s) -> phase-0 prediction(s) with a pix2pix_phase run")
    p.add_argument("--checkpoint", required=True, help="RUN/checkpoints/best.pt (or latest.pt, epoch_NNN.pt)")
    p.add_argument("--input", default=None, help="one NIfTI volume")
    p.add_argument("--out", default=None, help="output NIfTI (input's affine/header, float32 HU)")
    p.add_argument("--input-dir", default=None, help="a folder of NIfTI volumes (batch mode)")
    p.add_argument("--out-dir", default=None, help="output folder (same file names)")
    p.add_argument("--target-dir", default=None, help="same-named targets: writes OUT_DIR/metrics.csv (+ identity)")
    p.add_argument("--data-root", default=None, help="shard set whose prep window/size to use (default: the "
                   "settings recorded in the checkpoint)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    _add_json_flag(p)
    p.set_defaults(func=_infer_pix2pix)


def _infer_xray2ct(args: argparse.Namespace) -> None:
    from ctpipe.infer_xray2ct import infer_xray2ct  # lazy: pulls in the stages (~0.3 s at CLI start)

    device = pick_device(args.device, DistEnv())
    with Progress(1, "inference", "volumes"):
        result = infer_xray2ct(args.checkpoint, args.xrays, args.out, refine=args.refine, sample_id=args.sample_id,
                               fov_mm=args.fov_mm, device=device)
    emit(infer_xray2ct_summary(result), args.json)


def _add_infer_xray2ct(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("xray2ct", help="dual-view X-rays -> CT NIfTI (HU) with a stage1_64 (+ refine_256) or "
                         "direct_256 run")
    p.add_argument("--checkpoint", required=True, help="stage1_64 or direct_256 RUN/checkpoints/best.pt")
    p.add_argument("--xrays", required=True, help=".npy array (2, n, n) = (frontal, lateral) in [0, 1] (needs "
                   "--fov-mm), or a `ctpipe prep drr` shard-set folder (needs --sample-id)")
    p.add_argument("--out", required=True, help="output .nii or .nii.gz (RAS, isotropic fov/size spacing, HU)")
    p.add_argument("--refine", default=None, help="refine_256 RUN/checkpoints/best.pt (with a stage1_64 checkpoint)")
    p.add_argument("--sample-id", default=None, help="sample of the shard set given as --xrays")
    p.add_argument("--fov-mm", type=float, default=None, help="edge of the imaged cube in mm (required for .npy)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _add_json_flag(p)
    p.set_defaults(func=_infer_xray2ct)


def _add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="apply a trained model to new data")
    kinds = p.add_subparsers(dest="kind", required=True)
    _add_infer_pix2pix(kinds)
    _add_infer_xray2ct(kinds)


# ---- train / submit ------------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> None:
    from ctpipe.runner import run_stage  # lazy: pulls in the stages (~0.3 s at CLI start)

    overrides = [*preset_overrides(args.preset, args.stage), *args.overrides]
    result = run_stage(args.stage, Path(args.run_dir), overrides, args.config, args.force_resume,
                       restart=args.restart)
    print(json.dumps(result.__dict__))
    if result.status == "preempted":
        sys.exit(int(os.environ.get("CTPIPE_PREEMPT_EXIT_CODE", 3)))


def _submit(args: argparse.Namespace) -> None:
    res = Resources(timeout_min=args.timeout_min, nodes=args.nodes, tasks_per_node=args.tasks_per_node,
                    gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task)
    overrides = [*preset_overrides(args.preset, args.stage), *args.overrides]
    jobs = submit_training(args.stage, overrides, args.array or (), args.executor, args.run_dir, res, args.config)
    for job in jobs:
        print(f"submitted {args.stage} job {job.job_id}")
    if args.wait:
        if args.executor == "local":  # forward the jobs' log lines while waiting
            follow_jobs(jobs, lambda line: print(line, flush=True), keep=lambda line: not line.startswith("submitit "))
        for result in wait_all(jobs):
            print(json.dumps(result.__dict__))


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a stage in this process (resumes when --run-dir has a checkpoint)")
    p.add_argument("stage")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--config", default=None, help="config JSON (default: ctpipe/configs/<stage>.json)")
    p.add_argument("--force-resume", action="store_true",
                   help="resume although settings or data changed (the change is recorded in events.jsonl)")
    p.add_argument("--restart", action="store_true",
                   help="move the run folder's old content to RUN_DIR/archive-<time>/ and train anew (e.g. when "
                        "no checkpoint of it is readable)")
    _add_preset_flag(p)
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=3e-4")
    p.set_defaults(func=_train)
    p = sub.add_parser("submit", help="submit a stage through submitit (local executor by default); "
                       "`ctpipe submit pipeline FAMILY` submits a whole prep -> train -> aggregate chain",
                       epilog="ctpipe submit pipeline lodopab [--executor slurm] [--src RAW] ...: the whole chain "
                       "as dependent jobs (see ctpipe submit pipeline --help)")
    p.add_argument("stage", help="a stage name, or `pipeline` (see below)")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--executor", choices=("local", "slurm", "debug"), default="local")
    p.add_argument("--array", action="append", help="sweep key=v1,v2 (repeatable: cartesian product)")
    p.add_argument("--timeout-min", type=int, default=60)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--tasks-per-node", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpus-per-task", type=int, default=2)
    p.add_argument("--wait", action="store_true", help="wait for the jobs and print their results")
    _add_preset_flag(p)
    p.set_defaults(func=_submit)
    p = sub.add_parser("presets", help="list the --preset override sets per stage and the prep commands they expect")
    p.set_defaults(func=_presets)


def _add_preset_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help="a named override set applied before the overrides, e.g. cpu-tiny "
                   "(a CPU-sized run for the test cluster; `ctpipe presets` lists them)")


def _presets(args: argparse.Namespace) -> None:
    print(describe_presets())


# ---- submit pipeline -------------------------------------------------------------------------------------
def _submit_pipeline(args: argparse.Namespace) -> None:
    # lazy: pipeline pulls in pandas, the data, inference and stage modules (~0.3 s at CLI start)
    from ctpipe.pipeline import plan_pipeline, submit_pipeline

    synth = SynthSpec(n=args.n_synth, n_pixels=args.synth_pixels, n_angles=args.synth_angles,
                      samples_per_file=args.synth_per_file, seed=args.seed)
    stages = [s for s in args.stages.split(",") if s] if args.stages else None
    plan = plan_pipeline(args.family, args.name, args.src, synth, stages, args.overrides, args.array or (),
                         args.prep_tasks, args.shards, args.preset)
    res = Resources(timeout_min=args.timeout_min, nodes=args.nodes, tasks_per_node=args.tasks_per_node,
                    gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task)
    submitted = submit_pipeline(plan, args.executor, res, say=lambda line: print(line, flush=True))
    done = "written" if args.executor != "slurm" else "written when the aggregate job has run"
    print(f"results: {submitted.summary} ({done}); job ids in {plan.results / 'pipeline.json'}")


def _pipeline_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ctpipe submit pipeline",
        description="Submit a family's chain: (synthesize raw data) -> prep array -> training (an array per "
                    "--array sweep) -> aggregate, as SLURM jobs with afterok dependencies (--executor slurm), or run "
                    "the same steps in order (local, debug). Outputs: data/<name>/, runs/<name>/, results/<name>/.")
    p.add_argument("family", choices=tuple(FAMILIES), help="data family")
    p.add_argument("overrides", nargs="*", help="training config overrides key.sub=value (every stage)")
    p.add_argument("--executor", choices=("local", "slurm", "debug"), default="local")
    p.add_argument("--name", default=None, help="names data/<name>, runs/<name>, results/<name> (default: family)")
    p.add_argument("--src", default=None, help="raw data folder; without it a small synthetic set is written first")
    p.add_argument("--shards", default=None, help="shard-set folder (default data/<name>/shards)")
    p.add_argument("--n-synth", type=int, default=64, help="synthetic slices (lodopab), CT volumes (xray2ct) or "
                   "training patients (phases) when --src is absent")
    p.add_argument("--synth-pixels", type=int, default=64, help="synthetic image size (lodopab().scaled; CT edge; "
                   "phases slice edge)")
    p.add_argument("--synth-angles", type=int, default=60, help="synthetic projection angles")
    p.add_argument("--synth-per-file", type=int, default=16, help="synthetic slices per raw file (= per shard)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--stages", default=None, help="comma-separated stages to train (default: lodopab fbp_window; "
                   "xray2ct stage1_64,refine_256,direct_256; phases pix2pix_phase); lodopab fbp_window,fbp_unet: the "
                   "learned window, then fbp_unet on it beside the Hann-0.641 variant")
    _add_preset_flag(p)
    p.add_argument("--array", action="append", help="sweep key=v1,v2 (repeatable: cartesian product)")
    p.add_argument("--prep-tasks", type=int, default=8, help="prep array size cap (default 8)")
    p.add_argument("--timeout-min", type=int, default=60, help="training jobs' time limit")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--tasks-per-node", type=int, default=1, help="training ranks per node (= GPUs per node)")
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpus-per-task", type=int, default=2)
    p.set_defaults(func=_submit_pipeline, command="submit")
    return p


# ---- aggregate / demo ------------------------------------------------------------------------------------
def _aggregate(args: argparse.Namespace) -> None:
    from ctpipe.report import aggregate  # lazy: pandas costs ~0.2 s at CLI start

    for name, path in aggregate(Path(args.runs), Path(args.out)).items():
        print(f"{name}: {path}")


def _demo(args: argparse.Namespace) -> None:
    from ctpipe.demo import run_demo  # lazy: the demo pulls in pandas and the data modules (~0.2 s)

    run_demo(Path(args.workdir), n=args.n, epochs=args.epochs)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("aggregate", help="tabulate evaluated runs into summary.csv / per_sample.csv + PNGs")
    p.add_argument("--runs", required=True, help="folder searched for run folders")
    p.add_argument("--out", required=True, help="output folder, e.g. results/<name>/")
    p.set_defaults(func=_aggregate)
    p = sub.add_parser("demo", help="synthetic LoDoPaB -> prep -> experiment 1 via submitit (local) -> aggregate")
    p.add_argument("--workdir", default=".", help="where data/, runs/ and results/ are created")
    p.add_argument("--n", type=int, default=400, help="synthetic slices")
    p.add_argument("--epochs", type=int, default=10)
    p.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_prep, _add_train, _add_report, _add_infer):
        add(sub)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; ``key=value`` overrides may come before or after the options of train/submit."""
    argv = _attach_signed_lists(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["submit", "pipeline"]:  # `submit` takes a stage positional: the chain has its own parser
        return _pipeline_parser().parse_intermixed_args(argv[2:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        bad = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = [*args.overrides, *extra]
    return args


def _raised_by_ctpipe(err: BaseException) -> bool:
    """True when ctpipe's own code raised ``err`` (with a message for the user), not a library deep below."""
    tb = err.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)


def _unwrap_worker_message(text: str, name: str) -> str:
    """A DataLoader worker's error arrives as "Caught X in DataLoader worker ... Original Traceback ...: msg";
    keep the message."""
    if "Original Traceback" not in text:
        return text
    marker = f"{name}: "
    return text[text.rindex(marker) + len(marker):].strip() if marker in text else text


def user_message(err: BaseException) -> str | None:
    """The one-line message for an error that is the user's to fix; None for a bug (keep the traceback)."""
    if isinstance(err, DiskFullError):
        return str(err)
    if is_disk_full(err):
        where = getattr(err, "filename", None) or "the output's file system"
        return str(DiskFullError(where))
    if isinstance(err, (UserError, CheckpointError)):
        return _unwrap_worker_message(str(err), type(err).__name__)
    if isinstance(err, OSError) and err.filename is not None:  # a path that is missing, a folder, unreadable
        return f"{err.filename}: {err.strerror or err}; check the path and its permissions"
    if isinstance(err, (ValueError, KeyError, FileNotFoundError)) and _raised_by_ctpipe(err):
        return str(err.args[0] if isinstance(err, KeyError) and err.args else err)
    return None


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except Exception as err:
        message = user_message(err)
        if message is None or os.environ.get("CTPIPE_TRACEBACK") == "1":
            raise
        print(f"ctpipe {args.command}: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
