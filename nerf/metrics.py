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
    # float64 on the CPU: exact enough for comparisons, and MPS has no float64
    x = image.detach().to("cpu", torch.float64).permute(2, 0, 1)[:, None]  # [C, 1, H, W]
    y = target.detach().to("cpu", torch.float64).permute(2, 0, 1)[:, None]
    g = _gaussian_window(window_size, sigma, x.dtype, x.device)
    # the 2-D window is g g^T, so one pass of g along the rows and one along the columns is the same filter
    # with 2k taps a pixel instead of k^2 (a 2-D float64 window took 8 s at 800x800 on a 2-core CPU)
    blurred = F.conv2d(F.conv2d(torch.cat((x, y, x * x, y * y, x * y)), g.view(1, 1, 1, -1)),
                       g.view(1, 1, -1, 1))  # valid: [5C, 1, H-k+1, W-k+1]
    mu_x, mu_y, xx, yy, xy = blurred.chunk(5)
    var_x = xx - mu_x ** 2
    var_y = yy - mu_y ** 2
    cov = xy - mu_x * mu_y
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


class LpipsMetric:
    """LPIPS (VGG backbone, as in the paper) when the `lpips` package and its backbone weights are already
    installed. Nothing is ever downloaded: `create` returns None otherwise."""

    backbone = "vgg"
    _BACKBONE_FILE = "vgg16-397923af.pth"  # torchvision's cached ImageNet weights that lpips builds on

    def __init__(self, model, device):
        self.model, self.device = model, device

    @classmethod
    def unavailable_reason(cls) -> str:
        import importlib.util
        import os

        if importlib.util.find_spec("lpips") is None:
            return "not computed: the lpips package is not installed"
        hub = torch.hub.get_dir()
        if not os.path.isfile(os.path.join(hub, "checkpoints", cls._BACKBONE_FILE)):
            return f"not computed: {cls._BACKBONE_FILE} is not in the torch hub cache (never downloaded here)"
        return ""

    @classmethod
    def create(cls, device):
        if cls.unavailable_reason():
            return None
        import lpips

        return cls(lpips.LPIPS(net=cls.backbone, verbose=False).to(device).eval(), device)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, target: torch.Tensor) -> float:
        """[H, W, 3] in [0, 1]; the network expects [-1, 1]."""
        def to_net(t: torch.Tensor) -> torch.Tensor:
            return t.permute(2, 0, 1)[None].float().to(self.device) * 2 - 1  # [1, 3, H, W]

        return float(self.model(to_net(image), to_net(target)).item())
