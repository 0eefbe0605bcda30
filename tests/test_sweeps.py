from ctpipe.config import build_config
from ctpipe.launch import expand_sweep, sweep_run_dir
from ctpipe.stages import get_stage
from jobs.sweeps import SWEEPS


def test_every_sweep_point_is_a_valid_config():
    for name, (stage, sweep) in SWEEPS.items():
        points = sweep()
        assert len(points) == len({tuple(p) for p in points}) > 1, name
        for point in points:
            build_config(get_stage(stage).config_cls, {}, point)


def test_expand_sweep_is_a_cartesian_product(tmp_path):
    points = expand_sweep(["optim.lr=1,2", "train.seed=0,1,2"])
    assert len(points) == 6 and ["optim.lr=2", "train.seed=1"] in points
    assert expand_sweep([]) == [[]]
    dirs = {sweep_run_dir(tmp_path, p) for p in points}
    assert len(dirs) == 6
