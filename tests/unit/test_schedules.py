import math

import pytest
from pydantic import ValidationError

from fipframe.core.configs import Ramp, value_at


def test_ramp_shapes():
    lin = Ramp(start=1.0, end=0.0)
    assert [lin.at(p) for p in (0, 0.25, 1)] == [1.0, 0.75, 0.0]
    cos = Ramp(start=1.0, end=0.0, shape="cosine")
    assert cos.at(0.5) == pytest.approx(0.5) and cos.at(0.25) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4))
    )
    exp = Ramp(start=1e-2, end=1e-4, shape="exponential")
    assert exp.at(0.5) == pytest.approx(1e-3)
    warm = Ramp(start=2.0, end=0.0, warmup=0.5)
    assert warm.at(0.25) == pytest.approx(1.0) and warm.at(0.5) == pytest.approx(2.0)
    assert warm.at(1.5) == 0.0  # clamped
    assert value_at(0.3, 0.9) == 0.3


def test_bad_ramps():
    with pytest.raises(ValidationError):
        Ramp(start=1.0, end=0.0, warmup=1.0)
    with pytest.raises(ValueError, match="exponential ramp needs start > 0"):
        Ramp(start=0.0, end=1.0, shape="exponential").at(0.5)
