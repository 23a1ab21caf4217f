from bench.bench_nerf import network_flops_per_point
from nerf.config import ModelConfig
from nerf.models import build_model


def test_flops_per_point_of_the_paper_model():
    model = build_model(ModelConfig())
    weights = 595_844 - (8 * 256 + 128 + 256 + 1 + 3)  # parameters minus biases = multiply-adds per point
    assert weights == 593_408
    assert network_flops_per_point(model) == 3 * 2 * 593_408  # ~3.6 MFLOP forward + backward per point
