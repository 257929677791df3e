"""The one definition of a gallery's slot vector (:func:`pack_gallery_slots`), against its slot formula and
against the encrypted packing the service does (:func:`cryptoface.match.homomorphic.pack_gallery`)."""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.backends.protocol import CkksParameters, normalise_step
from cryptoface.backends.simulator import SimulatorBackend
from cryptoface.errors import ParameterError
from cryptoface.match import homomorphic as hm
from cryptoface.match.layout import GalleryLayout, TemplateLayout, gallery_layout, pack_gallery_slots


def _units(rng: np.random.Generator, n: int) -> np.ndarray:
    e = rng.standard_normal((n, 256))
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_ring_filling_gallery_slots():
    """Template n, element j at slot S * j + n (S = slots / 256); empty positions stay zero."""
    gal = gallery_layout(4096)
    assert gal.capacity == 16
    t = _units(np.random.default_rng(0), 11)
    v = pack_gallery_slots(t, gal)
    grid = v.reshape(256, 16)  # row j, column n = slot 16 * j + n
    np.testing.assert_array_equal(grid[:, :11], t.T)
    assert not grid[:, 11:].any()


@pytest.mark.parametrize("stride", [1, 2, 4, 16])
def test_gallery_slots_equal_shifted_single_copies(stride):
    """Any stride: the sum of each template's single-copy layout shifted right by ``shift(n)``."""
    gal = GalleryLayout(stride, 4096)
    t = _units(np.random.default_rng(stride), gal.capacity)
    want = sum(np.roll(TemplateLayout(stride, 1, 1.0).pack(e, 4096), gal.shift(n)) for n, e in enumerate(t))
    np.testing.assert_array_equal(pack_gallery_slots(t, gal), want)
    np.testing.assert_array_equal(pack_gallery_slots(t, gal)[gal.score_slots()], t[:, 0])


def test_gallery_slots_refuse_bad_shapes():
    gal = gallery_layout(4096)
    with pytest.raises(ParameterError, match="capacity"):
        pack_gallery_slots(np.zeros((17, 256)), gal)
    with pytest.raises(ParameterError, match="shape"):
        pack_gallery_slots(np.zeros(256), gal)


@pytest.mark.parametrize("stride", [4, 16])
def test_encrypted_packing_decrypts_to_the_slot_vector(stride):
    """The server's packing of encrypted templates and the client's packing of clear ones agree."""
    gal = GalleryLayout(stride, 4096)
    be = SimulatorBackend(CkksParameters(log_ring=13, levels=4))
    be.generate_keys({normalise_step(-k, be.slots) for k in gal.pack_steps()})
    single = TemplateLayout(stride, 1, 1.0)
    for count in (1, 5, gal.capacity):
        t = _units(np.random.default_rng(count), count)
        packed = hm.pack_gallery(be, [be.encrypt(single.pack(e, be.slots), 2) for e in t], gal)
        np.testing.assert_allclose(be.decrypt(packed), pack_gallery_slots(t, gal), atol=1e-12)
