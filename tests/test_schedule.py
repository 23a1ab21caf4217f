import pytest

from nerf.schedule import learning_rate


def test_exponential_decay_reaches_a_tenth_after_lr_decay_thousand_steps():
    assert learning_rate(0, 5e-4, 250) == pytest.approx(5e-4)
    assert learning_rate(250_000, 5e-4, 250) == pytest.approx(5e-5)
    assert learning_rate(500_000, 5e-4, 500) == pytest.approx(5e-5)  # Blender paper config
    assert learning_rate(125_000, 5e-4, 250) == pytest.approx(5e-4 * 0.1 ** 0.5)


def test_continuous_not_staircase_and_monotone():
    values = [learning_rate(k, 1.0, 0.001) for k in range(5)]
    assert values[1] == pytest.approx(0.1 ** (1 / 1.0))
    assert all(a > b for a, b in zip(values, values[1:]))


def test_non_positive_decay_keeps_lr_constant():
    assert learning_rate(10_000, 5e-4, 0) == 5e-4
    assert learning_rate(10_000, 5e-4, -1) == 5e-4


def test_custom_decay_factor():
    assert learning_rate(1000, 2.0, 1, decay_factor=0.5) == pytest.approx(1.0)
