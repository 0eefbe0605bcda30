import pytest
import torch

from ctpipe.models.pixel_shuffle3d import PixelShuffle3D, PixelUnshuffle3D, pixel_shuffle3d, pixel_unshuffle3d


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_shuffle_and_unshuffle_are_exact_inverses(factor):
    x = torch.randn(2, 3 * factor**3, 4, 5, 3, dtype=torch.float64)
    assert torch.equal(PixelUnshuffle3D(factor)(PixelShuffle3D(factor)(x)), x)
    y = torch.randn(2, 3, 4 * factor, 2 * factor, 5 * factor)
    assert torch.equal(pixel_shuffle3d(pixel_unshuffle3d(y, factor), factor), y)


def test_element_layout_matches_the_documented_formula():
    r, c = 2, 2
    x = torch.arange(1 * c * r**3 * 2 * 3 * 2, dtype=torch.float32).reshape(1, c * r**3, 2, 3, 2)
    out = pixel_shuffle3d(x, r)
    assert out.shape == (1, c, 4, 6, 4)
    for ch in range(c):
        for d in range(2):
            for h in range(3):
                for w in range(2):
                    for i in range(r):
                        for j in range(r):
                            for k in range(r):
                                assert out[0, ch, d * r + i, h * r + j, w * r + k] == x[0, ch * r**3 + i * r * r + j * r + k, d, h, w]


def test_matches_torch_2d_pixel_shuffle_on_a_flat_depth_axis():
    # with the depth factor folded away (all sub-positions i equal), the (j, k) layout is torch's 2D one
    x2d = torch.randn(1, 3 * 4, 5, 6)
    x3d = x2d.reshape(1, 3, 1, 4, 5, 6).expand(1, 3, 2, 4, 5, 6).reshape(1, 3 * 8, 1, 5, 6)
    out = pixel_shuffle3d(x3d, 2)
    expected = torch.nn.functional.pixel_shuffle(x2d, 2)
    assert torch.equal(out[:, :, 0], expected) and torch.equal(out[:, :, 1], expected)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="divisible by factor\\^3"):
        pixel_shuffle3d(torch.zeros(1, 7, 2, 2, 2), 2)
    with pytest.raises(ValueError, match="divisible by factor"):
        pixel_unshuffle3d(torch.zeros(1, 1, 3, 4, 4), 2)
    with pytest.raises(ValueError, match="5D"):
        pixel_shuffle3d(torch.zeros(8, 2, 2), 2)
