"""The MLPs' layers on the CPU: oneDNN's matrix product with the bias and the ReLU in it.

`dense(layer, x, relu)` = ReLU(x W^T + b) (or x W^T + b): [P, in] -> [P, out]. PyTorch's eager nn.Linear runs
an fp32 product on the CPU through MKL's sgemm, then a second pass for the ReLU. oneDNN (also in every
PyTorch CPU build) adds the bias and applies the ReLU while the product's output is still in registers, and
on some CPUs its fp32 kernels are faster than MKL's (on a 2-core AMD EPYC with AVX-512: a [2048, 256] x
[256, 256] product 158-169 GFLOP/s against 144-156, a 2048^3 one 177-205 against 136-139). Which library a
machine gets is its `use_onednn` setting (nerf/runtime.py measures it once per machine and caches it).

The backward pass (`_OneDnnLinear`) masks the gradient where the ReLU's output is 0, then takes the input
gradient from oneDNN (grad W, the same kernel) and the weight gradient from `torch.mm` (MKL: oneDNN is 2-3x
slower for that shape, [out, P] x [P, in] with a long sum) and the bias gradient as a column sum. Each
output row depends on its input row alone, with the same summation order for any number of rows (tested),
so the network chunk still leaves the forward pass bit-identical.

Elsewhere (CUDA, autocast, fp64, torch.compile, a build without oneDNN) `dense` is nn.Linear and an in-place
ReLU, as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_state = {"use_onednn": False}


def onednn_available() -> bool:
    """True where this PyTorch build has oneDNN's fused linear operator for the CPU."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def use_onednn(enabled: bool) -> None:
    """Run the CPU's fp32 layers through oneDNN (True) or nn.Linear (False, the default). A process-wide
    setting of this machine, like torch.backends' flags: nerf/runtime.py: field_runners sets it from
    runtime.cpu_layers. Ignored where oneDNN is missing."""
    _state["use_onednn"] = bool(enabled) and onednn_available()


def onednn_in_use() -> bool:
    return _state["use_onednn"]


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias, relu: bool) -> torch.Tensor:
    """oneDNN's ReLU(x W^T + b) or x W^T + b, without autograd: [P, in], [out, in], [out] or None -> [P, out]."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """y = ReLU(x W^T + b) (relu) or x W^T + b, forward by oneDNN. Backward, with g the gradient of y masked by
    y > 0 where relu: dx = g W (oneDNN), dW = g^T x (torch.mm), db = sum over the rows of g."""

    @staticmethod
    def forward(ctx, x, weight, bias, relu: bool):
        y = onednn_linear(x, weight, bias, relu)  # [P, out]
        ctx.relu = relu
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, y = ctx.saved_tensors
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, y, 0)  # 0 where the ReLU's output is 0, as autograd's
        grad_x = onednn_linear(grad, weight.t(), None, False) if ctx.needs_input_grad[0] else None  # [P, in]
        grad_weight = torch.mm(grad.t(), x) if ctx.needs_input_grad[1] else None  # [out, in]
        grad_bias = grad.sum(0) if ctx.needs_input_grad[2] else None  # [out]
        return grad_x, grad_weight, grad_bias, None


def _takes_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (_state["use_onednn"] and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())


def dense(layer: nn.Linear, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """ReLU(layer(x)) if relu else layer(x): [P, in] -> [P, out]; by oneDNN where use_onednn is on (see above)."""
    if _takes_onednn(x, layer.weight):
        return _OneDnnLinear.apply(x, layer.weight, layer.bias, relu)
    y = layer(x)
    return torch.relu_(y) if relu else y  # in place: the fresh layer output is not kept for backward
