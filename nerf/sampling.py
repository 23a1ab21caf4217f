"""Stratified (coarse) and hierarchical (fine) sampling along rays, as in the official code."""

from __future__ import annotations

from typing import Optional

import torch


def stratified_samples(near: torch.Tensor, far: torch.Tensor, num_samples: int, perturb: bool,
                       lindisp: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Coarse depths z: [R, S].

    t = linspace(0, 1, S); z = near (1 - t) + far t, or with lindisp 1 / (1/near (1 - t) + 1/far t).
    With perturb: mids = (z_k + z_{k+1})/2, lower = [z_0, mids], upper = [mids, z_last],
    z = lower + (upper - lower) u with u ~ U[0, 1) drawn per sample.
    near, far: [R].
    """
    t = torch.linspace(0.0, 1.0, num_samples, device=near.device, dtype=near.dtype)  # [S]
    near, far = near[:, None], far[:, None]  # [R, 1]
    if lindisp:
        z = 1.0 / (1.0 / near * (1.0 - t) + 1.0 / far * t)  # [R, S]
    else:
        z = near * (1.0 - t) + far * t  # [R, S]
    if perturb:
        mids = 0.5 * (z[:, 1:] + z[:, :-1])
        upper = torch.cat((mids, z[:, -1:]), dim=-1)
        lower = torch.cat((z[:, :1], mids), dim=-1)
        u = torch.rand(z.shape, device=z.device, dtype=z.dtype, generator=generator)
        z = lower + (upper - lower) * u
    return z


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, num_samples: int, deterministic: bool,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Inverse-transform sampling of the piecewise-constant pdf given by `weights` over `bins`.

    bins: [R, B+1] edges, weights: [R, B] -> samples: [R, num_samples] (not sorted).
    pdf = (w + 1e-5) / sum; cdf = [0, cumsum(pdf)]; u = linspace(0, 1, n) if deterministic else U[0, 1);
    idx = searchsorted(cdf, u, right); below = max(idx-1, 0), above = min(idx, B);
    sample = bin[below] + (u - cdf[below]) / denom * (bin[above] - bin[below]) with denom =
    cdf[above] - cdf[below], replaced by 1 where < 1e-5.
    """
    weights = weights + 1e-5  # keeps the pdf defined where all weights are zero
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat((torch.zeros_like(cdf[:, :1]), cdf), dim=-1)  # [R, B+1]
    shape = (cdf.shape[0], num_samples)
    if deterministic:
        u = torch.linspace(0.0, 1.0, num_samples, device=cdf.device, dtype=cdf.dtype).expand(shape)
    else:
        u = torch.rand(shape, device=cdf.device, dtype=cdf.dtype, generator=generator)
    u = u.contiguous()
    idx = torch.searchsorted(cdf.contiguous(), u, right=True)
    below = (idx - 1).clamp(min=0)
    above = idx.clamp(max=cdf.shape[-1] - 1)
    cdf_below, cdf_above = cdf.gather(-1, below), cdf.gather(-1, above)
    bins_below, bins_above = bins.gather(-1, below), bins.gather(-1, above)
    denom = cdf_above - cdf_below
    denom = torch.where(denom < 1e-5, torch.ones_like(denom), denom)
    t = (u - cdf_below) / denom
    return bins_below + t * (bins_above - bins_below)


def hierarchical_samples(z_coarse: torch.Tensor, weights_coarse: torch.Tensor, num_fine: int,
                         deterministic: bool, generator: Optional[torch.Generator] = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fine depths for the fine pass.

    The importance samples z_f = sample_pdf(mids of z_coarse, w[1:-1]) are detached; returns
    (sort([z_coarse, z_f]): [R, S_c + S_f], z_f: [R, S_f]).
    """
    mids = 0.5 * (z_coarse[:, 1:] + z_coarse[:, :-1])  # [R, S_c - 1]
    z_fine = sample_pdf(mids, weights_coarse[:, 1:-1], num_fine, deterministic, generator)
    z_fine = z_fine.detach()  # no gradient flows into the coarse weights through the sample positions
    return torch.sort(torch.cat((z_coarse, z_fine), dim=-1), dim=-1).values, z_fine
