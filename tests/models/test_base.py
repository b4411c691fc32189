"""Adapter contract value types: Normalizer (OpenVLA BOUNDS_Q99), ActionSpec, TokenCounts."""

from __future__ import annotations

import json

import numpy as np

from vla_compress.models.base import ActionSpec, Normalizer, TokenCounts


def test_normalizer_maps_bounds_to_unit_interval():
    n = Normalizer(np.array([0.0, -2.0]), np.array([1.0, 2.0]))
    x = np.array([[0.0, -2.0], [1.0, 2.0], [0.5, 0.0]], dtype=np.float32)
    assert np.allclose(n.normalize(x), [[-1, -1], [1, 1], [0, 0]])
    assert np.allclose(n.unnormalize(n.normalize(x)), x, atol=1e-6)


def test_normalizer_clips_and_respects_mask():
    n = Normalizer(np.array([0.0, 0.0]), np.array([1.0, 1.0]), mask=np.array([True, False]))
    y = n.normalize(np.array([5.0, 5.0]))
    assert y.tolist() == [1.0, 5.0]  # clipped; the masked-out dim is untouched
    assert n.unnormalize(np.array([0.0, 0.25])).tolist() == [0.5, 0.25]
    assert y.dtype == np.float32


def test_normalizer_dict_round_trip_through_json():
    n = Normalizer(np.array([-0.1, 0.2, 0.3]), np.array([0.1, 0.5, 0.9]), mask=np.array([True, False, True]))
    back = Normalizer.from_dict(json.loads(json.dumps(n.to_dict())))
    assert np.array_equal(back.low, n.low) and np.array_equal(back.high, n.high) and np.array_equal(back.mask, n.mask)
    assert Normalizer.from_dict({"q01": [0.0], "q99": [1.0]}).mask.tolist() == [True]  # mask optional


def test_degenerate_bounds_do_not_divide_by_zero():
    n = Normalizer(np.array([1.0]), np.array([1.0]))
    assert np.isfinite(n.normalize(np.array([1.0]))).all()


def test_spec_and_counts_to_dict():
    spec = ActionSpec(dim=7, chunk_size=1, head="tokens", n_bins=256, tokens_per_step=7)
    assert spec.to_dict() == {"dim": 7, "chunk_size": 1, "head": "tokens", "n_bins": 256, "tokens_per_step": 7,
                              "integration_steps": 0}
    counts = TokenCounts(visual=256, text=20, proprio=0, action=7)
    assert counts.prefill == 276 and counts.to_dict()["prefill"] == 276
