"""Full-size encrypted CryptoFaceNet4 on a real CKKS backend (N = 2^16, 128-bit parameters): slow, CI runs it.

One bundled sample face, the bundled model, the default plan and parameters; the decrypted template must
match the numpy reference within 1e-3 x max|reference| (the engine issue's criterion).
"""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.assets import SAMPLES_DIR, default_model_path
from cryptoface.backends import available_backends, create_backend
from cryptoface.engine import decrypt_embedding, encrypt_image, infer_template, plan_for, rotation_steps_for
from cryptoface.face import preprocess
from cryptoface.model.file import load_model
from cryptoface.model.reference import forward
from cryptoface.params import default_parameters

pytestmark = pytest.mark.slow


@pytest.mark.skipif("desilofhe" not in available_backends(), reason="desilofhe is not importable here")
def test_desilofhe_net4_matches_reference():
    model = load_model(default_model_path())
    params = default_parameters(64)
    params.check_security()
    backend = create_backend("desilofhe", params)
    backend.generate_keys(sorted(rotation_steps_for(64, backend.slots, params.levels)))
    x = preprocess(SAMPLES_DIR / "obama3.jpg", 64)
    ct, _ = infer_template(backend, model, encrypt_image(backend, 64, x))
    got = decrypt_embedding(backend, plan_for(64, backend.slots, params.levels), model, ct)  # the clear tail
    ref = forward(model, x)
    assert np.max(np.abs(got - ref)) <= 1e-3 * np.max(np.abs(ref))
