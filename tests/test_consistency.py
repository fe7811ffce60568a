"""Mixture consistency against hand computations."""

import numpy as np
import pytest
import torch

from tsmixit.models import mixture_consistency


@pytest.mark.parametrize("weights", ["uniform", "energy"])
def test_outputs_sum_to_mixture(weights):
    est = torch.randn(3, 4, 500, dtype=torch.float64)
    mixture = torch.randn(3, 500, dtype=torch.float64)
    out = mixture_consistency(est, mixture, weights=weights)
    torch.testing.assert_close(out.sum(dim=1), mixture, atol=1e-12, rtol=0)


@pytest.mark.parametrize("weights", ["uniform", "energy"])
def test_identity_when_already_consistent(weights):
    est = torch.randn(2, 3, 200, dtype=torch.float64)
    torch.testing.assert_close(
        mixture_consistency(est, est.sum(dim=1), weights=weights), est, atol=1e-12, rtol=0
    )


def test_weights_match_hand_computation():
    est = np.array([[[1.0, 0.0], [0.0, 2.0]]])  # energies 1 and 4
    mixture = np.array([[2.0, 1.0]])
    residual = mixture - est.sum(axis=1)  # [[1, -1]]
    uniform = est + residual[:, None] / 2
    energy = est + residual[:, None] * np.array([1 / 5, 4 / 5])[None, :, None]
    t_est, t_mix = torch.from_numpy(est), torch.from_numpy(mixture)
    np.testing.assert_allclose(mixture_consistency(t_est, t_mix).numpy(), uniform)
    np.testing.assert_allclose(
        mixture_consistency(t_est, t_mix, weights="energy").numpy(), energy, rtol=1e-7
    )


def test_energy_weights_silent_outputs_fall_back_to_uniform():
    est = torch.zeros(1, 4, 50, requires_grad=True)
    mixture = torch.randn(1, 50)
    out = mixture_consistency(est, mixture, weights="energy")
    torch.testing.assert_close(out, mixture.unsqueeze(1).expand(1, 4, 50) / 4)
    out.pow(2).sum().backward()
    assert torch.isfinite(est.grad).all()


def test_rejects_bad_shapes_and_weights():
    with pytest.raises(ValueError, match="mixture"):
        mixture_consistency(torch.randn(2, 3, 10), torch.randn(2, 11))
    with pytest.raises(ValueError, match="weights"):
        mixture_consistency(torch.randn(2, 3, 10), torch.randn(2, 10), weights="equal")
