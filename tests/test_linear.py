"""nerf/linear.py: the MLP layers through oneDNN on the CPU, against nn.Linear."""

import pytest
import torch
from torch import nn

from nerf import linear
from nerf.linear import dense

needs_onednn = pytest.mark.skipif(not linear.onednn_available(), reason="this PyTorch build has no oneDNN")


def _layer(in_features=37, out_features=29, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.bias)  # nonzero, so that the bias is tested
    return layer


def _through(layer, x, relu, onednn):
    """dense(layer, x, relu) and the gradients of a fixed function of it with respect to x, W and b."""
    linear.use_onednn(onednn)
    x = x.detach().requires_grad_(True)
    y = dense(layer, x, relu)
    weights = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
    grads = torch.autograd.grad((y * weights).sum(), (x, layer.weight, layer.bias))
    return y.detach(), grads


@needs_onednn
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "plain"])
def test_onednn_layers_compute_nn_linear_and_its_gradients(relu):
    """Values and the gradients of x, W and b agree with nn.Linear (+ ReLU) to fp32 rounding; where the ReLU
    cuts (about half the outputs here), the gradient is cut exactly as autograd's."""
    layer = _layer()
    x = torch.randn(300, 37) * 2
    y_ref, grads_ref = _through(layer, x, relu, onednn=False)
    y, grads = _through(layer, x, relu, onednn=True)
    assert linear.onednn_in_use()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    if relu:
        assert torch.equal(y == 0, y_ref == 0) and 0.3 < (y == 0).float().mean() < 0.7
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_a_row_of_the_output_does_not_depend_on_how_many_rows_are_multiplied_with_it():
    """What keeps the network chunk bit-identical in the forward pass: the first rows of a call of any size are
    the same bits as those of a call of a few rows."""
    layer = _layer(256, 256)
    x = torch.randn(9000, 256)
    linear.use_onednn(True)
    with torch.no_grad():
        few = dense(layer, x[:7], relu=True)
        for rows in (8, 1000, 1024, 2048, 4096, 8192, 9000):
            assert torch.equal(dense(layer, x[:rows], relu=True)[:7], few), rows


@needs_onednn
def test_an_input_without_gradient_still_gives_the_weights_theirs():
    """The first layer's input is the encoding, which needs no gradient: the weights get nn.Linear's."""
    layer, x = _layer(), torch.randn(50, 37)
    grads = []
    for onednn in (False, True):
        linear.use_onednn(onednn)
        layer.zero_grad()
        dense(layer, x, relu=True).square().sum().backward()
        grads.append((layer.weight.grad.clone(), layer.bias.grad.clone()))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_the_stock_path_is_taken_where_onednn_does_not_apply(monkeypatch):
    """Off (the default), under autocast, for fp64, or where the build has no oneDNN: nn.Linear itself."""
    layer = _layer()
    calls = []
    monkeypatch.setattr(linear, "onednn_linear", lambda *a: calls.append(a) or pytest.fail("oneDNN used"))
    x = torch.randn(20, 37)
    want = torch.relu(layer(x))
    assert torch.equal(dense(layer, x, relu=True), want)  # off by default
    linear._state["use_onednn"] = True  # on, but not for these:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dense(layer, x, relu=True).dtype == torch.bfloat16
    assert dense(layer.double(), x.double(), relu=False).dtype == torch.float64
    monkeypatch.setattr(linear, "onednn_available", lambda: False)
    linear.use_onednn(True)
    assert not linear.onednn_in_use()
    assert not calls
