"""The paper's method: a coarse and a fine MLP with stratified and hierarchical sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..metrics import mse_to_psnr
from .base import Method


class CoarseFineMethod(Method):
    """Coarse MLP on stratified samples, fine MLP on coarse + inverse-CDF samples (or the coarse MLP alone
    with num_fine 0); loss MSE(fine) + MSE(coarse). Nothing to add to the base method but a scalar."""

    def scalars(self, out: dict, target: torch.Tensor) -> dict:
        if "rgb0" not in out:
            return {}
        return {"train/psnr_coarse": mse_to_psnr(F.mse_loss(out["rgb0"], target).item())}
