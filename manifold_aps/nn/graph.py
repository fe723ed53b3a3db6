"""Per-domain tensors the layers need (diffusion operator, eigenbasis, pooling), as a Module."""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from manifold_aps.geometry import Domain
from manifold_aps.geometry.domain import sparse_to_torch

__all__ = ["DomainTensors", "diffusion_matrix"]

# torch flags sparse CSR as "beta" at every construction; we rely only on its stable matmul.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def diffusion_matrix(domain: Domain) -> sp.csr_matrix:
    r"""Random-walk operator :math:`P = D_+^{-1} W_+`, sparse `(N, N)`, rows summing to 1.

    :math:`W_+` keeps the positive conductances (cotangent weights can be negative on obtuse
    meshes). `P` averages each node's neighbours in proportion to their conductance, so it is a
    scale-free, isotropic local operator: :math:`I - P` approximates a rescaled Laplacian and
    commutes with the symmetries of the domain up to discretisation error.
    """
    w = domain.adjacency().maximum(0).tocsr()
    deg = np.asarray(w.sum(axis=1)).ravel()
    if np.any(deg <= 0):
        raise ValueError(f"{domain!r} has isolated nodes (no positive conductance)")
    return (sp.diags(1.0 / deg) @ w).tocsr()


class DomainTensors(nn.Module):
    r"""Geometry of one domain as non-persistent buffers (moved by `.to(device)`, never saved).

    Buffers (float64; layers cast them to their input's dtype): `diffusion` (sparse CSR `(N, N)`, see `diffusion_matrix`), `basis` `(N, K)` and
    `analysis` `(K, N)` with :math:`\Phi^T M` (so `analysis @ basis = I`), `eigenvalues` `(K,)`,
    `positional` `(N, P)`: the eigenvectors 1..P scaled to unit mean square (an intrinsic
    positional encoding).

    Arguments:
        domain: the domain.
        num_modes: `K`, number of Laplace-Beltrami modes for spectral layers (clipped to `N`).
        num_positional: `P`, number of eigenvectors in the positional encoding.
    """

    def __init__(self, domain: Domain, num_modes: int = 64, num_positional: int = 8):
        super().__init__()
        self.num_nodes = domain.num_nodes
        k = min(max(num_modes, num_positional + 1), domain.num_nodes)
        lam, phi = domain.eigenbasis(k)
        mass = domain.mass
        # Precomputed in float64 and cast to the input's dtype at call time (exact inverses of
        # spectral flow layers need analysis @ basis = I to float64 precision).
        self.register_buffer(
            "diffusion", sparse_to_torch(diffusion_matrix(domain), torch.float64).to_sparse_csr(), persistent=False
        )
        self.register_buffer("basis", phi[:, :num_modes].clone(), persistent=False)
        self.register_buffer("analysis", (phi[:, :num_modes] * mass[:, None]).T.contiguous(), persistent=False)
        scale = float(lam[1]) if lam.numel() > 1 and lam[1] > 0 else 1.0
        self.register_buffer("eigenvalues", lam[:num_modes] / scale, persistent=False)
        pe = phi[:, 1 : num_positional + 1] * math.sqrt(domain.total_area)
        self.register_buffer("positional", pe, persistent=False)

    def diffusion_as(self, dtype: torch.dtype) -> torch.Tensor:
        """The sparse diffusion operator in `dtype` (cast once per dtype and cached)."""
        if self.diffusion.dtype == dtype:
            return self.diffusion
        cache = self.__dict__.setdefault("_diffusion_cache", {})
        key = (dtype, self.diffusion.device)
        if key not in cache:
            cache[key] = self.diffusion.to(dtype)
        return cache[key]
