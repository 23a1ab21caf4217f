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


def test_decay_start_holds_the_full_rate_then_decays_as_from_step_zero():
    """lr0 up to step 2000, then a tenth more per 500 steps (0.1 lr0 at 2500)."""
    assert [learning_rate(k, 1e-3, 0.5, decay_start=2000) for k in (0, 1000, 2000)] == [1e-3] * 3
    assert learning_rate(2250, 1e-3, 0.5, decay_start=2000) == pytest.approx(1e-3 * 0.1 ** 0.5)
    assert learning_rate(2500, 1e-3, 0.5, decay_start=2000) == pytest.approx(1e-4)
    for k in (2001, 2300, 4000):
        assert learning_rate(k, 1e-3, 0.5, decay_start=2000) == pytest.approx(learning_rate(k - 2000, 1e-3, 0.5))
    assert learning_rate(3000, 1e-3, 0, decay_start=2000) == 1e-3  # no decay configured: none


def test_fern_fast_ends_at_a_tenth_of_its_rate_after_holding_it_for_1500_steps():
    """What docs/fast_preset.md says of the preset's schedule, read from its config."""
    import os

    from nerf.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "config", "fern_fast.yml"))
    s, lr = cfg.scheduler, cfg.optimizer.lr

    def rate(k):
        return learning_rate(k, lr, s.lr_decay, decay_factor=s.lr_decay_factor, decay_start=s.decay_start)

    assert rate(0) == rate(1500) == lr
    assert rate(cfg.experiment.train_iters) == pytest.approx(0.1 * lr)
