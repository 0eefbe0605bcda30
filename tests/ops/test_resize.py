"""resize_cube: block means for an integer shrink, trilinear otherwise, unchanged at the same size."""

import torch
import torch.nn.functional as F

from ctpipe.data.drr_prep import downsample_cube
from ctpipe.ops.resize import resize_cube


def test_an_integer_shrink_is_the_mean_of_each_block():
    volume = torch.arange(4.0**3).reshape(1, 1, 4, 4, 4)
    out = resize_cube(volume, 2)
    assert out.shape == (1, 1, 2, 2, 2)
    assert out[0, 0, 1, 0, 1] == volume[0, 0, 2:4, 0:2, 2:4].mean()


def test_other_sizes_are_trilinear_and_the_same_size_is_untouched():
    volume = torch.rand(2, 1, 6, 6, 6)
    assert resize_cube(volume, 6) is volume
    expected = F.interpolate(volume, size=(4, 4, 4), mode="trilinear", align_corners=False)
    assert torch.equal(resize_cube(volume, 4), expected)


def test_the_prep_downsamples_a_cube_the_same_way():
    cube = torch.rand(8, 8, 8)
    assert torch.equal(downsample_cube(cube, 4), resize_cube(cube[None, None], 4)[0, 0])
    assert torch.equal(downsample_cube(cube, 8), cube)
