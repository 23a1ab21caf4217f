"""Image metrics by the NeRF evaluation conventions (images in [0, 1])."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mse_to_psnr(mse: float | torch.Tensor) -> float:
    """PSNR = -10 log10(MSE) for images in [0, 1]; compute it from the fine MSE alone."""
    mse = float(mse)
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR of one image pair [..., 3] in [0, 1] (average per-image values over a test set)."""
    return mse_to_psnr(torch.mean((image.float() - target.float()) ** 2))


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()  # [size]


def ssim(image: torch.Tensor, target: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, max_val: float = 1.0) -> float:
    """Mean SSIM of two [H, W, C] images (tf.image.ssim convention: 11x11 Gaussian, sigma 1.5, valid
    filtering, per-channel maps averaged).

    SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
    C1 = (k1 L)^2, C2 = (k2 L)^2, with local statistics under the Gaussian window.
    """
    x = image.double().permute(2, 0, 1)[:, None]  # [C, 1, H, W]
    y = target.double().permute(2, 0, 1)[:, None]
    g = _gaussian_window(window_size, sigma, x.dtype, x.device)
    window = (g[:, None] * g[None, :])[None, None]  # [1, 1, k, k]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)  # valid: [C, 1, H-k+1, W-k+1]

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())
