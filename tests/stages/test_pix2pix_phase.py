"""Stage pix2pix_phase end to end on synthetic beating-heart CT: exact resume, beats the identity baseline on
whole volumes, per-volume evaluation rows, config rules."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import torch

from ctpipe.checkpoint import LATEST, load_checkpoint
from ctpipe.config import ConfigError, build_config, load_json
from ctpipe.data import synthetic_phases as sp
from ctpipe.data.datasets import load_splits
from ctpipe.data.nifti_pairs import canonical_slices, load_volume, prep_nifti_pairs
from ctpipe.infer_pix2pix import evaluate_volume
from ctpipe.intensity import symmetric_unit_to_hu
from ctpipe.runner import run_stage, stage_config_path
from ctpipe.schedules import linear_decay_factor
from ctpipe.stages.phases_common import predict_volumes
from ctpipe.stages.pix2pix_phase import (Pix2PixLossConfig, Pix2PixModelConfig, Pix2PixPhaseConfig, load_trained_generator,
                                        resolve_num_downs)
from ctpipe.train import StopFlag
from tests.threads import one_torch_thread

TINY = ["train.device=cpu", "model.num_downs=6", "model.ngf=8", "model.ndf=8", "model.n_layers_d=2",
        "data.num_workers=0", "data.eval_batch_size=16", "train.log_every=100000", "train.checkpoint_every=0"]
PSNR_HU, SSIM_HU, MAE_HU = "psnr_hu[range=4095]", "ssim2d_hu[range=4095]", "mae_hu"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def phases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 synthetic patients, 64^2 x 16 slices -> shards; splits (by patient hash): 4 train, 1 val, 1 test."""
    root = tmp_path_factory.mktemp("phases")
    sp.write_synthetic_phases(root / "src", 6, size=64, n_slices=16)
    prep_nifti_pairs(root / "src", root / "shards", size=64, split_fractions=(0.6, 0.2, 0.2))
    return root


class StopAtCheck(StopFlag):
    """Sets itself on the n-th check (the trainer checks once after every step): a stop from a callback."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.checks = n, 0

    def is_set(self) -> bool:
        self.checks += 1
        if self.checks == self.n:
            self.set("test")
        return super().is_set()


def test_interrupted_run_resumes_exactly(phases: Path, tmp_path: Path) -> None:
    # batch norm (running stats) + dropout (RNG) + both Adam states + linear decay: all must survive
    over = TINY + [f"data.root={phases / 'shards'}", "train.epochs=2", "scheduler.n_epochs_constant=1",
                   "model.norm=batch", "model.dropout=true", "optim.lr=1e-3"]
    ref = run_stage("pix2pix_phase", tmp_path / "ref", over, evaluate=False)
    assert ref.status == "completed"
    statuses, steps = [], []
    for n in (5, 14, None):  # 16 steps per epoch: stop at step 5 (epoch 1) and 19 (epoch 2), then finish
        flag = StopAtCheck(n) if n else StopFlag()
        result = run_stage("pix2pix_phase", tmp_path / "run", over, stop_flag=flag, evaluate=False)
        statuses.append(result.status)
        steps.append(load_checkpoint(tmp_path / "run" / "checkpoints" / LATEST)["global_step"])
    assert statuses == ["preempted", "preempted", "completed"] and steps == [5, 19, 32]
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / LATEST)
    b = load_checkpoint(tmp_path / "run" / "checkpoints" / LATEST)
    for net in ("G", "D"):
        assert a["models"][net].keys() == b["models"][net].keys()
        for key, value in a["models"][net].items():
            assert torch.equal(value, b["models"][net][key]), f"{net}.{key}"
    assert (tmp_path / "ref" / "history.csv").read_bytes() == (tmp_path / "run" / "history.csv").read_bytes()
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    for term in ("train_G_gan", "train_G_l1", "train_D_real", "train_D_fake", "val_loss", "val_psnr[range=-1..1]",
                 "val_ssim[range=-1..1]", "lr_G", "lr_D"):
        assert term in history.columns, term
    # pix2pix rule: lr constant for n_epochs_constant epochs, then linear decay (the row holds the epoch's lr)
    assert history["lr_G"].tolist() == pytest.approx([1e-3, 0.5e-3])
    assert history["lr_G"].tolist() == pytest.approx([1e-3 * linear_decay_factor(e, 1, 2) for e in (0, 1)])
    assert history["lr_D"].tolist() == history["lr_G"].tolist()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 synthetic patients, 64^2 x 16 slices: enough anatomy for a tiny generator to generalise (with 4-10
    training patients it memorises them and loses to the identity baseline on new ones)."""
    root = tmp_path_factory.mktemp("cohort")
    sp.write_synthetic_phases(root / "src", 64, size=64, n_slices=16)
    prep_nifti_pairs(root / "src", root / "shards", size=64, split_fractions=(0.8, 0.1, 0.1))
    return root


def _moving_region(patient_id: str, n_slices: int = 16, size: int = 64, n_phases: int = 10) -> np.ndarray:
    """Canonical ``(D, H, W)`` mask of the voxels whose noise-free HU changes over the cycle: the heart.
    Recomputed from the phantom itself (same seed and patient draw), so it favours neither prediction."""
    index = int(patient_id.rsplit("_", 1)[1])
    patient = sp._draw_patient(np.random.default_rng([0, index]))
    shape, affine = sp.phase_grid(size, n_slices)
    clean = [sp.clean_phase(patient, affine, shape, p / n_phases) for p in range(n_phases)]
    moving = np.any(np.stack(clean) != clean[0], axis=0)
    return canonical_slices(moving.astype(np.float32), affine) > 0.5


@pytest.mark.slow
def test_generator_beats_identity_on_whole_volumes(cohort: Path, tmp_path: Path) -> None:
    """The seeds' objective (vanilla GAN + 50 * L1, instance norm), a 24-channel 6-level U-Net, 16 epochs
    (3,264 steps) on CPU: on every validation and test volume the generator's whole-volume PSNR (HU) beats
    the identity baseline (the time-averaged input), its mean SSIM does too, and in the heart (where the
    phases differ) its MAE is far lower. Whole-volume MAE is printed, not asserted: it is dominated by the
    target's own noise (sigma 10 HU, which the identity baseline partly shares), see the issue note.

    Margins measured with train.seed 0, 1 and 3: smallest per-volume gain 0.80-1.32 dB, mean gain 2.06-2.83
    dB. With 12 epochs they were too thin (seed 1: one validation volume at -0.01 dB, equal mean SSIM), so a
    change of CPU, and with it of float rounding, could flip the outcome."""
    run = tmp_path / "run"
    over = TINY + [f"data.root={cohort / 'shards'}", "model.ngf=24", "model.norm=instance", "model.dropout=false",
                   "optim.lr=2e-3", "train.epochs=16", "scheduler.n_epochs_constant=8"]
    assert run_stage("pix2pix_phase", run, over).status == "completed"
    trained = load_trained_generator(run / "checkpoints" / "best.pt")
    assert (trained.config.loss.lambda_l1, trained.config.loss.gan_mode) == (50.0, "vanilla")  # the seeds'
    data = trained.config.data
    _, val_set, test_set = load_splits(data, (data.input_field, data.target_field))
    window = trained.prep.window
    table = []
    for split, dataset in (("validation", val_set), ("test", test_set)):
        rows = {m: pd.read_csv(run / "eval" / split / f"{m}.csv").set_index("patient_id")
                for m in ("pix2pix", "identity")}
        model, ident = rows["pix2pix"], rows["identity"]
        assert len(model) >= 3 and list(model.index) == list(ident.index)
        gain = model[PSNR_HU] - ident[PSNR_HU]
        assert (gain > 0.25).all(), gain
        assert gain.mean() > 1.5, gain
        assert model[SSIM_HU].mean() > ident[SSIM_HU].mean()
        for volume in predict_volumes(trained.generator, dataset, trained.config.data, torch.device("cpu")):
            x, y, p = (symmetric_unit_to_hu(v.astype(np.float64), window)
                       for v in (volume.input, volume.target, volume.prediction))
            heart = _moving_region(volume.patient_id)
            assert heart.shape == x.shape and 0.02 < heart.mean() < 0.2
            model_mae, identity_mae = np.abs(p - y)[heart].mean(), np.abs(x - y)[heart].mean()
            pid = volume.patient_id
            table.append((split, pid, round(gain[pid], 2), round(model_mae, 1), round(identity_mae, 1),
                          round(model.loc[pid, MAE_HU], 1), round(ident.loc[pid, MAE_HU], 1)))
            assert model_mae < 0.8 * identity_mae, table[-1]
            # the per-volume rows are evaluate_volume on exactly these volumes (the model row from best.pt)
            assert ident.loc[pid, PSNR_HU] == pytest.approx(evaluate_volume(x, y, window)[PSNR_HU])
            assert model.loc[pid, MAE_HU] == pytest.approx(evaluate_volume(p, y, window)[MAE_HU])
    assert {row[0] for row in table} == {"validation", "test"}
    print("(split, patient, PSNR gain dB, heart MAE model/identity, volume MAE model/identity):", table)


def test_eval_rows_are_per_volume_in_hu_and_normalised(phases: Path, tmp_path: Path) -> None:
    over = TINY + [f"data.root={phases / 'shards'}", "train.epochs=1", "scheduler.n_epochs_constant=1",
                   "train.max_steps_per_epoch=2"]
    run_stage("pix2pix_phase", tmp_path, over)
    frame = pd.read_csv(tmp_path / "eval" / "test" / "identity.csv")
    assert len(frame) == 1 and frame["grid"].tolist() == ["16x64x64"]
    for column in ("psnr_hu[range=4095]", "ssim2d_hu[range=4095]", "mae_hu", "psnr_norm[range=1]",
                   "ssim2d_norm[range=1]", "mae_norm"):
        assert column in frame.columns, column
    # identity row from the shards = evaluate_volume on the raw NIfTI files (same grid: the prep did not resize)
    pid = frame["patient_id"].iloc[0]
    volumes = [load_volume(phases / "src" / f"train{s}" / f"{pid}.nii.gz") for s in ("A", "B")]
    x, y = (canonical_slices(v.data, v.affine) for v in volumes)
    expected = evaluate_volume(x, y)
    assert frame[PSNR_HU].iloc[0] == pytest.approx(expected[PSNR_HU], rel=1e-6)
    assert frame["mae_norm"].iloc[0] == pytest.approx(expected["mae_hu"] / 4095, rel=1e-6)
    assert np.load(tmp_path / "eval" / "test" / "examples.npz")["pix2pix"].shape == (1, 64, 64)


def test_packaged_config_and_rules() -> None:
    cfg = build_config(Pix2PixPhaseConfig, load_json(stage_config_path("pix2pix_phase")))
    assert (cfg.model.generator, cfg.model.norm, cfg.data.batch_size) == ("unet_512", "instance", 4)
    assert (cfg.loss.lambda_l1, cfg.optim.lr, cfg.optim.betas) == (50.0, 1e-4, (0.5, 0.999))
    assert (cfg.train.checkpoint_every, cfg.train.epochs, cfg.scheduler.n_epochs_constant) == (5, 200, 100)
    assert cfg.optim_discriminator == cfg.optim
    # one source of defaults: the stage dataclass holds the seeds' settings (lambda 50); the loss class keeps
    # the reference pix2pix value (100) as its own default
    assert cfg == Pix2PixPhaseConfig() and Pix2PixLossConfig().lambda_l1 == 100.0
    with pytest.raises(ConfigError, match="n_epochs_constant"):
        build_config(Pix2PixPhaseConfig, {}, ["train.epochs=10", "scheduler.name=linear_decay",
                                                "scheduler.n_epochs_constant=20"])


def test_slice_size_must_fit_the_generator(phases: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="multiples of 256"):
        run_stage("pix2pix_phase", tmp_path, TINY + [f"data.root={phases / 'shards'}", "model.num_downs=8"])


def test_unset_num_downs_picks_the_deepest_u_net_the_slices_allow(phases: Path, tmp_path: Path) -> None:
    """64^2 slices and the default unet_512 (9 levels): 6 levels are picked; inference rebuilds the same net."""
    tiny = [o for o in TINY if not o.startswith("model.num_downs")]
    over = tiny + [f"data.root={phases / 'shards'}", "model.generator=unet_512", "train.epochs=1",
                   "scheduler.n_epochs_constant=1", "train.max_steps_per_epoch=2"]
    assert run_stage("pix2pix_phase", tmp_path, over, evaluate=False).status == "completed"
    trained = load_trained_generator(tmp_path / "checkpoints" / LATEST)  # strict load: same depth as trained
    assert trained.generator.config.num_downs == 6
    assert tuple(trained.generator(torch.zeros(1, 1, 64, 64)).shape) == (1, 1, 64, 64)


def test_sizes_that_do_not_fit_fail_naming_the_size_and_valid_depths() -> None:
    model = Pix2PixModelConfig(generator="unet_256")
    assert [resolve_num_downs(model, (s, s)) for s in (32, 64, 96, 256, 512)] == [5, 6, 5, 8, 8]
    assert resolve_num_downs(Pix2PixModelConfig(generator="unet_512"), (512, 512)) == 9
    with pytest.raises(ConfigError, match=r"slices in the shard set are 64x64.*valid model.num_downs for 64x64: 5, 6"):
        resolve_num_downs(Pix2PixModelConfig(num_downs=8), (64, 64))
    with pytest.raises(ConfigError, match=r"are 48x48.*multiples of 32.*--size 64"):
        resolve_num_downs(model, (48, 48))


def test_schedule_lengths_are_checked_against_epochs_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"n_epochs_constant=100 must lie in 0..train.epochs=10.*set "
                                          r"scheduler.n_epochs_constant=5"):
        build_config(Pix2PixPhaseConfig, load_json(stage_config_path("pix2pix_phase")), ["train.epochs=10"])
    from ctpipe.stages.fbp_window import FBPWindowConfig

    with pytest.raises(ConfigError, match=r"train.val_every=5 > train.epochs=3.*set train.val_every=1"):
        build_config(FBPWindowConfig, {}, ["train.epochs=3", "train.val_every=5"])
    with pytest.raises(ConfigError, match=r"set scheduler.n_epochs_constant=2"):
        build_config(FBPWindowConfig, {}, ["train.epochs=4", "scheduler.name=linear_decay",
                                            "scheduler.n_epochs_constant=9"])


def _ddp_worker(rank: int, world: int, root: str, run_dir: str, port: int, queue) -> None:  # pragma: no cover
    import os

    from ctpipe import distributed as dist_utils
    from ctpipe.stages.pix2pix_phase import Pix2PixPhaseTask
    from ctpipe.train import RunSettings, Trainer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    env = dist_utils.detect_env()
    device = torch.device("cpu")
    dist_utils.init_distributed(env, device)
    cfg = build_config(Pix2PixPhaseConfig, load_json(stage_config_path("pix2pix_phase")),
                       TINY + [f"data.root={root}", "model.norm=batch", "train.epochs=1",
                               "scheduler.n_epochs_constant=1", "train.max_steps_per_epoch=3", "data.batch_size=2"])
    torch.manual_seed(0)  # identical initial weights (DDP also broadcasts rank 0's)
    task = Pix2PixPhaseTask(cfg, env, device)
    trainer = Trainer(task, RunSettings(cfg.train, cfg.scheduler, batch_size=2), run_dir, device, env, progress=False)
    wrapped = trainer.stepper.module("D")
    result = trainer.fit()
    params = {f"{n}.{k}": v.detach().numpy().copy() for n, m in task.modules.items() for k, v in m.named_parameters()}
    queue.put((rank, result.status, isinstance(wrapped, torch.nn.parallel.DistributedDataParallel),
               wrapped.module is task.D, params))
    dist_utils.shutdown()


@pytest.mark.slow
def test_two_rank_ddp_keeps_g_and_d_in_sync(phases: Path, tmp_path: Path) -> None:
    """gloo on CPU, BatchNorm in both nets (SyncBatchNorm is GPU-only): after D and G steps through the DDP
    wrappers, both ranks hold identical parameters (gradients were all-reduced) and the G step's frozen D pass
    used the very module the DDP wrapper holds."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(phases / "shards"), str(tmp_path), port, queue))
             for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = sorted((queue.get(timeout=120) for _ in procs), key=lambda r: r[0])
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    assert [r[1:4] for r in results] == [("completed", True, True)] * 2
    a, b = results[0][4], results[1][4]
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
