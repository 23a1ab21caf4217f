"""Loss terms: the photometric loss of the paper and the regularisers of the fast field.

Shapes as in the package legend (nerf/__init__.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .rays import Rays


def photometric_loss(out: dict, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's loss: MSE(fine) + MSE(coarse) (the coarse term when there is a coarse pass, `rgb0`).
    out["rgb"], target: [R, 3]. Returns (loss, fine MSE); PSNR is computed from the fine MSE alone."""
    loss_fine = F.mse_loss(out["rgb"], target)
    loss = (loss_fine + F.mse_loss(out["rgb0"], target)) if "rgb0" in out else loss_fine
    return loss, loss_fine


def distortion_loss(weights: torch.Tensor, s: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
    """Distortion loss of Mip-NeRF 360 (eq. 15) per ray, for samples that are intervals of length ds
    centred at s (normalised ray distance, so the weight does not depend on the scene's scale):

        L = sum_{i,j} w_i w_j |s_i - s_j| + 1/3 sum_i w_i^2 ds_i
          = 2 sum_i w_i (s_i W_<i - (w s)_<i) + 1/3 sum_i w_i^2 ds_i,   W_<i = sum_{j<i} w_j,

    which is O(S) when s is nondecreasing along the samples that carry weight (padding has w = 0).
    weights, s: [R, S]; ds: [R, S] or [R, 1]. Returns [R].
    """
    weight_before = torch.cumsum(weights, dim=-1) - weights  # [R, S], exclusive
    weighted_s_before = torch.cumsum(weights * s, dim=-1) - weights * s  # [R, S]
    pairs = 2.0 * (weights * (s * weight_before - weighted_s_before)).sum(dim=-1)  # [R]
    return pairs + (weights.square() * ds).sum(dim=-1) / 3.0


def ray_distortion_loss(weights: torch.Tensor, t: torch.Tensor, dt: torch.Tensor, rays: Rays) -> torch.Tensor:
    """`distortion_loss` of samples at t [R, S] with intervals dt [R, S] along rays, in the ray distance
    normalised to [near, far] -> [0, 1]: s = (t - near) / (far - near), ds = dt / (far - near) (NDC: s = t).
    Returns [R]."""
    span = (rays.far - rays.near)[:, None]  # [R, 1]
    return distortion_loss(weights, (t - rays.near[:, None]) / span, dt / span)


def background_entropy(acc: torch.Tensor) -> torch.Tensor:
    """DVGO's background-entropy term: the binary entropy of the transmittance left after the last sample,
    p = 1 - acc (clamped to [1e-6, 1 - 1e-6]): -(p log p + (1 - p) log(1 - p)), lowest when a ray is either
    fully opaque or fully background. acc: [R] -> [R]."""
    p = (1.0 - acc).clamp(1e-6, 1.0 - 1e-6)
    return -(p * torch.log(p) + (1.0 - p) * torch.log1p(-p))


def sample_color_loss(weights: torch.Tensor, sample_rgb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DVGO's per-sample colour loss: each sample's colour pulled towards its pixel's, in proportion to the
    sample's (detached) compositing weight: L = sum_k sg(w_k) ||c_k - C||^2. The split renderer gives the
    samples below its colour threshold c_k = 0: they add a constant (< 3 x threshold each), no gradient.

    weights: [R, S]; sample_rgb: [R, S, 3]; target: [R, 3]. Returns [R].
    """
    return (weights.detach() * (sample_rgb - target[:, None, :]).square().sum(dim=-1)).sum(dim=-1)


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss; the message gives the step and what to change."""


class NonFiniteWatch:
    """Remembers the first step whose loss was NaN or infinite, without a host synchronisation per step:
    `record` queues two small device ops; `first_bad_step` reads the result (one synchronisation), which
    the training loop does where it synchronises anyway. On the CPU that costs nothing, so it reads every
    step (`check_every_step`) and stops before the bad step's update; on a GPU it reads at logging steps
    and before every save, so a NaN is caught at most experiment.print_every steps late and never saved."""

    def __init__(self, device: torch.device):
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.value = torch.zeros((), device=device)
        self.check_every_step = device.type == "cpu"

    def record(self, loss: torch.Tensor, step: int) -> None:
        """Remember `step` and the loss value if the loss is not finite and no earlier step was (on the device)."""
        new = ~torch.isfinite(loss.detach()) & (self.first < 0)
        self.first = torch.where(new, torch.full_like(self.first, step), self.first)
        self.value = torch.where(new, loss.detach().float(), self.value)

    def first_bad_step(self) -> tuple[int, float] | None:
        """(step, loss value) of the first non-finite loss recorded, or None."""
        step = int(self.first.item())
        return (step, float(self.value.item())) if step >= 0 else None
