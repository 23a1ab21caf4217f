import math

import torch

from nerf.encoding import encoding_width, frequency_bands, positional_encoding


def test_widths_match_the_paper():
    assert encoding_width(10) == 63
    assert encoding_width(4) == 27
    assert encoding_width(4, include_input=False) == 24
    assert positional_encoding(torch.zeros(5, 3), 10).shape == (5, 63)
    assert positional_encoding(torch.zeros(2, 7, 3), 4).shape == (2, 7, 27)


def test_hand_computed_layout_input_first_sin_before_cos_no_pi():
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    out = positional_encoding(x, 2)
    expected = [0.5, -1.0, 2.0]
    for freq in (1.0, 2.0):
        expected += [math.sin(freq * v) for v in (0.5, -1.0, 2.0)]
        expected += [math.cos(freq * v) for v in (0.5, -1.0, 2.0)]
    assert torch.allclose(out[0], torch.tensor(expected, dtype=torch.float64))


def test_frequency_bands():
    assert torch.equal(frequency_bands(4), torch.tensor([1.0, 2.0, 4.0, 8.0]))
    assert torch.allclose(frequency_bands(10)[-1], torch.tensor(512.0))
    assert torch.allclose(frequency_bands(3, log_sampling=False), torch.tensor([1.0, 2.5, 4.0]))


def test_without_input_and_non_log_sampling():
    x = torch.tensor([[0.3, 0.2, 0.1]])
    out = positional_encoding(x, 3, include_input=False, log_sampling=False)
    bands = torch.tensor([1.0, 2.5, 4.0])
    assert torch.allclose(out[0, :3], torch.sin(x[0] * bands[0]))
    assert torch.allclose(out[0, 15:], torch.cos(x[0] * bands[2]))
