import pytest
import torch

from nerf.config import ModelConfig
from nerf.encoding import positional_encoding
from nerf.models import NeRFModel, TinyNeRFModel, build_model, count_parameters, linear_of_concat


def test_paper_model_size_and_layer_shapes():
    model = build_model(ModelConfig(type="PaperNeRFModel"))
    assert count_parameters(model) == 595_844
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["pts_linears.0.weight"] == (256, 63)
    assert shapes["pts_linears.5.weight"] == (256, 319)  # skip after layer 4
    assert all(shapes[f"pts_linears.{k}.weight"] == (256, 256) for k in (1, 2, 3, 4, 6, 7))
    assert shapes["views_linears.0.weight"] == (128, 283)
    assert shapes["feature_linear.weight"] == (256, 256)
    assert shapes["alpha_linear.weight"] == (1, 256)
    assert shapes["rgb_linear.weight"] == (3, 128)
    assert len(shapes) == 24


def test_glorot_init_zero_bias():
    model = build_model(ModelConfig())
    assert all(torch.count_nonzero(b) == 0 for k, b in model.state_dict().items() if k.endswith("bias"))
    w = model.pts_linears[1].weight
    bound = (6.0 / (256 + 256)) ** 0.5
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.9 * bound


def _reference_forward(model, points, dirs):
    """The official forward written out step by step from the paper recipe."""
    x = positional_encoding(points, 10)
    h = x
    for k in range(8):
        h = torch.relu(h @ model.pts_linears[k].weight.T + model.pts_linears[k].bias)
        if k == 4:
            h = torch.cat([x, h], -1)
    sigma = h @ model.alpha_linear.weight.T + model.alpha_linear.bias
    feature = h @ model.feature_linear.weight.T + model.feature_linear.bias
    h2 = torch.cat([feature, positional_encoding(dirs, 4)], -1)
    h2 = torch.relu(h2 @ model.views_linears[0].weight.T + model.views_linears[0].bias)
    rgb = h2 @ model.rgb_linear.weight.T + model.rgb_linear.bias
    return torch.cat([rgb, sigma], -1)


def test_paper_forward_matches_the_recipe():
    model = build_model(ModelConfig())
    for p in model.parameters():  # non-zero biases so their handling is checked too
        torch.nn.init.normal_(p, std=0.1)
    points, dirs = torch.randn(17, 3), torch.nn.functional.normalize(torch.randn(17, 3), dim=-1)
    assert torch.allclose(model(points, dirs), _reference_forward(model, points, dirs), atol=1e-5)


def test_linear_of_concat_is_the_layer_of_the_concatenation_with_the_same_gradients():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5 + 3, 4)
    first, second = torch.randn(6, 5, requires_grad=True), torch.randn(6, 3)  # second: a constant encoding
    upstream = torch.randn(6, 4)
    concat = layer(torch.cat((first, second), dim=-1))
    grads_concat = torch.autograd.grad(concat, (first, layer.weight, layer.bias), upstream)
    split = linear_of_concat(layer, first, second)
    grads_split = torch.autograd.grad(split, (first, layer.weight, layer.bias), upstream)
    assert torch.allclose(split, concat, atol=1e-6)
    for a, b in zip(grads_split, grads_concat):
        assert torch.allclose(a, b, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an fp32 encoding beside bf16 activations stays bf16
        assert linear_of_concat(layer, first.bfloat16(), second).dtype == torch.bfloat16


def test_flexible_model_honours_depth_width_and_skip():
    cfg = ModelConfig(type="FlexibleNeRFModel", num_layers=5, hidden_size=32, skip_connect_every=2,
                      hidden_size_dir=16, num_encoding_fn_xyz=6, num_encoding_fn_dir=2)
    model = build_model(cfg)
    assert len(model.pts_linears) == 5
    assert model.skips == (2,)
    assert model.pts_linears[3].in_features == 32 + 39
    assert model.pts_linears[4].in_features == 32
    assert model.views_linears[0].weight.shape == (16, 32 + 15)
    assert model(torch.randn(4, 3), torch.randn(4, 3)).shape == (4, 4)
    no_skip = build_model(ModelConfig(type="FlexibleNeRFModel", num_layers=4, hidden_size=64, skip_connect_every=0))
    assert no_skip.skips == ()


def test_without_viewdirs_single_output_layer():
    model = NeRFModel(use_viewdirs=False)
    assert model.output_linear.weight.shape == (4, 256)
    assert not hasattr(model, "views_linears")
    assert model(torch.randn(3, 3), None).shape == (3, 4)


def test_tiny_model_takes_direction_at_input():
    model = build_model(ModelConfig(type="TinyNeRFModel", num_layers=2, hidden_size=16, skip_connect_every=0,
                                    num_encoding_fn_xyz=4, num_encoding_fn_dir=2))
    assert isinstance(model, TinyNeRFModel)
    assert model.pts_linears[0].in_features == 27 + 15
    points = torch.randn(6, 3)
    a = model(points, torch.tensor([[0.0, 0.0, 1.0]]).expand(6, 3))
    b = model(points, torch.tensor([[1.0, 0.0, 0.0]]).expand(6, 3))
    assert a.shape == (6, 4) and not torch.allclose(a, b)


def test_view_direction_does_not_change_density():
    model = build_model(ModelConfig())
    points = torch.randn(8, 3)
    a = model(points, torch.tensor([[0.0, 0.0, 1.0]]).expand(8, 3))
    b = model(points, torch.tensor([[0.0, 1.0, 0.0]]).expand(8, 3))
    assert torch.equal(a[:, 3], b[:, 3])


def test_unknown_type_rejected():
    with pytest.raises(ValueError):
        build_model(ModelConfig(type="Nope"))
