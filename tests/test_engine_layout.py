"""Engine layouts and parameters: round trips, no collisions, defaults within the security bound."""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.engine import layout as lay
from cryptoface.engine.template import TEMPLATE_SCALE
from cryptoface.params import LEVELS, default_parameters, secure_parameters

SLOTS = 1 << 15


@pytest.mark.parametrize("family", lay.FAMILIES)
@pytest.mark.parametrize("n", [4, 9, 16])
def test_stage_layouts_round_trip(family: str, n: int) -> None:
    rng = np.random.default_rng(n)
    for name, layout in lay.stage_layouts(n, SLOTS, family).items():
        layout.validate()
        t = rng.standard_normal(layout.shape)
        vecs = layout.pack(t)
        assert len(vecs) == layout.n_cts
        np.testing.assert_array_equal(layout.unpack(vecs), t, err_msg=name)
        # every copy holds the same values, and nothing else is nonzero
        total = sum(int(np.count_nonzero(v)) for v in vecs)
        assert total == sum(s.size for s in layout.occupied())


def test_polyphase_even_pixels_are_next_stage_order() -> None:
    p32 = lay.polyphase_order(32, 32, 2)
    p16 = lay.polyphase_order(16, 16, 1)
    np.testing.assert_array_equal(p32[::2, ::2], p16)
    np.testing.assert_array_equal(p16[::2, ::2], lay.raster_order(8, 8))
    assert sorted(p32.ravel().tolist()) == list(range(1024))


def test_template_layout() -> None:
    t = lay.TemplateLayout(16, scale=1.0)
    v = np.arange(256.0)
    vec = t.pack(v, SLOTS)
    assert np.count_nonzero(vec) == 255 and vec[16 * 3] == 3.0
    np.testing.assert_array_equal(t.unpack(vec), v)
    # replicated and scaled (the engine's default): element j at every slot = j (mod 256)
    r = lay.TemplateLayout(1, SLOTS // 256)
    assert r.scale == TEMPLATE_SCALE and r.span == SLOTS
    vec = r.pack(v, SLOTS)
    np.testing.assert_allclose(vec, np.tile(TEMPLATE_SCALE * v, SLOTS // 256))
    np.testing.assert_allclose(r.unpack(vec), v)
    assert r.all_slots().shape == (128, 256) and np.unique(r.all_slots()).size == SLOTS
    with pytest.raises(ValueError):
        lay.TemplateLayout(1, 3)
    with pytest.raises(ValueError):
        lay.TemplateLayout(1, 256).pack(v, SLOTS)
    with pytest.raises(ValueError):
        lay.TemplateLayout(256)
    with pytest.raises(ValueError):
        lay.TemplateLayout(3)


@pytest.mark.parametrize("resolution", [64, 96, 128])
def test_default_parameters_secure(resolution: int) -> None:
    for protocol, reserve, bits in (("refresh", 0, 43), ("one-round", LEVELS.matching_reserve, 42)):
        p = default_parameters(resolution, protocol=protocol)
        p.check_security()
        assert p.log_qp <= 1772
        assert p.levels == (LEVELS.refresh_levels(resolution) if protocol == "refresh" else
                            LEVELS.network_levels(resolution) + reserve)
        assert p.ring_degree == 1 << 16 and p.scale_bits == bits


def test_default_parameters_levels_and_modes() -> None:
    from cryptoface.errors import ParameterError

    p = default_parameters(64)
    assert (p.levels, p.scale_bits, p.key_switch_digits, p.log_qp) == (21, 43, 2, 1503)  # Net4 trunk
    p = default_parameters(96)  # the whole network: the units are summed on the server
    assert (p.levels, p.scale_bits, p.key_switch_digits, p.log_qp) == (23, 43, 2, 1589)
    p = default_parameters(64, protocol="one-round")
    assert (p.levels, p.scale_bits, p.key_switch_digits, p.log_qp) == (30, 42, 4, 1680)
    d = default_parameters(64, mode="decision", protocol="one-round")
    assert d.levels == 30 + LEVELS.decision and d.log_qp <= 1772
    d.check_security()
    assert default_parameters(64, mode="decision", sign_levels=6, protocol="one-round").levels == 36
    with pytest.raises(ParameterError):
        secure_parameters(43)  # 60 + 43 * 42 = 1866 bits of Q alone exceed 1772
    with pytest.raises(ValueError):
        default_parameters(64, mode="maybe")
