"""Positional encoding gamma(p) of the official NeRF code."""

from __future__ import annotations

import torch


def frequency_bands(num_freqs: int, log_sampling: bool = True) -> torch.Tensor:
    """Frequencies of the encoding: 2^linspace(0, L-1, L) (log sampling) or linspace(1, 2^(L-1), L).

    There is no factor pi: the paper writes 2^k * pi, the official code does not.
    """
    if num_freqs == 0:
        return torch.zeros(0)
    if log_sampling:
        return 2.0 ** torch.linspace(0.0, num_freqs - 1, num_freqs)
    return torch.linspace(1.0, 2.0 ** (num_freqs - 1), num_freqs)


def encoding_width(num_freqs: int, include_input: bool = True, input_dims: int = 3) -> int:
    """Output width of `positional_encoding`: 3 (if included) + 2 * 3 * L. L=10 -> 63, L=4 -> 27."""
    return input_dims * (int(include_input) + 2 * num_freqs)


def positional_encoding(x: torch.Tensor, num_freqs: int, include_input: bool = True,
                        log_sampling: bool = True) -> torch.Tensor:
    """gamma(x) = [x, sin(f_0 x), cos(f_0 x), ..., sin(f_{L-1} x), cos(f_{L-1} x)].

    x: [..., 3] -> [..., 3 * (include_input + 2L)]; input first, then per band sin before cos,
    each block 3 wide (the official layout, which imported weights depend on).
    """
    bands = frequency_bands(num_freqs, log_sampling).to(device=x.device, dtype=x.dtype)
    scaled = x[..., None, :] * bands[:, None]  # [..., L, 3]
    sincos = torch.stack((torch.sin(scaled), torch.cos(scaled)), dim=-2)  # [..., L, 2, 3]
    sincos = sincos.flatten(-3)  # [..., 6L]
    return torch.cat((x, sincos), dim=-1) if include_input else sincos
