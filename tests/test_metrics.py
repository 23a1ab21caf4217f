import math

import numpy as np
import pytest
import torch

from nerf.metrics import mse_to_psnr, psnr, ssim


def test_psnr_of_known_mse():
    assert mse_to_psnr(0.01) == pytest.approx(20.0)
    assert mse_to_psnr(1e-4) == pytest.approx(40.0)
    assert mse_to_psnr(0.0) == math.inf
    a = torch.zeros(4, 4, 3)
    assert psnr(a + 0.1, a) == pytest.approx(20.0, abs=1e-4)


def test_ssim_of_identical_images_is_one():
    img = torch.rand(32, 32, 3)
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)


def _ssim_bruteforce(x, y, size=11, sigma=1.5, k1=0.01, k2=0.03):
    """Independent reference: explicit windows, per channel, valid positions only (tf.image.ssim)."""
    coords = np.arange(size) - (size - 1) / 2
    g = np.exp(-coords ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (k1) ** 2, (k2) ** 2
    values = []
    for c in range(x.shape[2]):
        for r in range(x.shape[0] - size + 1):
            for q in range(x.shape[1] - size + 1):
                a = x[r:r + size, q:q + size, c]
                b = y[r:r + size, q:q + size, c]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                cov = (w * (a - ma) * (b - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    x = rng.random((16, 18, 3))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    expected = _ssim_bruteforce(x, y)
    assert ssim(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, abs=1e-9)
    assert expected < 0.95
