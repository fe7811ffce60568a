"""Mixture consistency projection (Wisdom et al., ICASSP 2019, "Differentiable consistency
constraints for improved deep speech enhancement").

The separator's M outputs are corrected so that they sum exactly to the input mixture x:

    s_hat_m <- s_hat_m + w_m (x - sum_k s_hat_k),   sum_m w_m = 1,

with uniform weights w_m = 1/M, or energy weights w_m = |s_hat_m|^2 / sum_k |s_hat_k|^2
(louder outputs absorb more of the residual). The projection is a few tensor operations, so
it is written here rather than taken from a library.
"""

from typing import Literal

from torch import Tensor

Weights = Literal["uniform", "energy"]


def mixture_consistency(
    est: Tensor, mixture: Tensor, weights: Weights = "uniform", eps: float = 1e-8
) -> Tensor:
    """Project the estimates s_hat (B, M, T) so that they sum to the mixture x (B, T).

    ``weights="energy"`` uses w_m = (|s_hat_m|^2 + eps) / sum_k (|s_hat_k|^2 + eps), which
    sums to one exactly and falls back to uniform weights when every output is silent.
    """
    if est.dim() != 3 or mixture.shape != (est.shape[0], est.shape[2]):
        raise ValueError(
            f"mixture_consistency expects est (B, M, T) and mixture (B, T); "
            f"got {tuple(est.shape)} and {tuple(mixture.shape)}"
        )
    residual = (mixture - est.sum(dim=1)).unsqueeze(1)  # (B, 1, T)
    if weights == "uniform":
        return est + residual / est.shape[1]
    if weights == "energy":
        energy = est.pow(2).sum(dim=-1, keepdim=True) + eps  # (B, M, 1)
        return est + residual * (energy / energy.sum(dim=1, keepdim=True))
    raise ValueError(f"mixture consistency weights must be 'uniform' or 'energy', got {weights!r}")
