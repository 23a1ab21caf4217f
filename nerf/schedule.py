"""Learning-rate schedule of the official code, as a pure function of the step."""

from __future__ import annotations


def learning_rate(step: int, lr0: float, lr_decay: float, decay_factor: float = 0.1, decay_start: int = 0) -> float:
    """lr(k) = lr0 * decay_factor^(max(k - decay_start, 0) / (lr_decay * 1000)) for the 0-based optimizer step k.

    Continuous, not staircase. lr_decay is in thousands of steps (250 = LLFF and default, 500 = the
    Blender paper config); lr_decay <= 0 keeps lr0, as the official code does. decay_start (0, the
    official schedule) holds lr0 for that many steps first: a short run can learn at full speed and still
    end at a small step size.
    """
    if lr_decay <= 0:
        return lr0
    return lr0 * decay_factor ** (max(step - decay_start, 0) / (lr_decay * 1000.0))
