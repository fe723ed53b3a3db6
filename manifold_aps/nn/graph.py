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

__all__ = ["DomainTensors", "SavedEigenpairs", "diffusion_matrix"]

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


class SavedEigenpairs(nn.Module):
    r"""Base of modules built on Laplace-Beltrami eigenpairs: these are saved, the rest derived.

    A subclass names its eigenpair buffers in `SPECTRUM`, registers the pairs it is built with by
    `register_eigenpairs` (persistent float64 buffers: they are in `state_dict`), and rebuilds
    everything it computes from them, as non-persistent buffers, in `_derive_spectral_buffers`,
    which its `__init__` calls once. Loading a state dict copies the saved eigenpairs and calls
    `_derive_spectral_buffers` again, so what the module computes depends on the checkpoint,
    never on the eigenbasis cache or the solver of the machine that loads it (solvers may return
    any orthonormal basis of a degenerate eigenspace). A state dict that holds none of them (an
    older checkpoint) keeps the freshly computed eigenpairs, with a `RuntimeWarning`; strict
    loading does not count them as missing.
    """

    SPECTRUM: tuple[str, ...] = ()  # names of the eigenpair buffers a subclass may register

    def register_eigenpairs(
        self, values_name: str, vectors_name: str, pairs: tuple[torch.Tensor, torch.Tensor]
    ) -> None:
        """Register eigenvalues `(k,)` and eigenvectors `(N, k)` as persistent float64 buffers.

        Raises:
            ValueError: a name is not in `SPECTRUM` (it would not be recognised on load).
        """
        for name in (values_name, vectors_name):
            if name not in self.SPECTRUM:
                raise ValueError(
                    f"eigenpair buffer name must be one of {list(self.SPECTRUM)}, got {name!r}"
                )
        values, vectors = pairs
        self.register_buffer(values_name, values.to(torch.float64).clone())
        self.register_buffer(vectors_name, vectors.to(torch.float64).clone())

    def _derive_spectral_buffers(self) -> None:
        """(Re)build the buffers computed from the registered eigenpairs."""
        raise NotImplementedError

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        keys = [prefix + name for name in self.SPECTRUM if name in self._buffers]
        old_format = bool(keys) and not any(key in state_dict for key in keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if old_format:
            for key in keys:
                if key in missing_keys:
                    missing_keys.remove(key)
            warnings.warn(
                f"the state dict holds no {type(self).__name__} eigenpairs "
                "(a checkpoint from before they were saved); using the ones computed now, "
                "which may differ from those the network was trained with",
                RuntimeWarning,
                stacklevel=2,
            )
        self._derive_spectral_buffers()


class DomainTensors(SavedEigenpairs):
    r"""Geometry of one domain as buffers (moved by `.to(device)`).

    Buffers (float64; layers cast them to their input's dtype): `diffusion` (sparse CSR `(N, N)`,
    see `diffusion_matrix`), `basis` `(N, K)` and
    `analysis` `(K, N)` with :math:`\Phi^T M` (so `analysis @ basis = I`), `eigenvalues` `(K,)`
    (divided by the first non-zero one), `positional` `(N, P)`: the eigenvectors 1..P scaled to
    unit mean square (an intrinsic positional encoding).

    Only the eigenpairs the module was built with are saved in `state_dict` (see
    `SavedEigenpairs`): `modes` `(N, k)` and `mode_eigenvalues` `(k,)`,
    :math:`k = \min(\max(K, P + 1), N)`, float64. Loading them rebuilds the four spectral buffers
    from them, so a trained network never depends on the eigenbasis cache or on the solver of
    the machine that loads it. A state dict without them (an older checkpoint) keeps the freshly
    computed eigenpairs, with a warning.

    Arguments:
        domain: the domain.
        num_modes: `K`, number of Laplace-Beltrami modes for spectral layers (clipped to `N`).
        num_positional: `P`, number of eigenvectors in the positional encoding.
    """

    SPECTRUM = ("modes", "mode_eigenvalues")  # the persistent buffers

    def __init__(self, domain: Domain, num_modes: int = 64, num_positional: int = 8):
        super().__init__()
        self.num_nodes = domain.num_nodes
        self.num_modes, self.num_positional = num_modes, num_positional
        self.total_area = domain.total_area
        k = min(max(num_modes, num_positional + 1), domain.num_nodes)
        # Precomputed in float64 and cast to the input's dtype at call time (exact inverses of
        # spectral flow layers need analysis @ basis = I to float64 precision).
        self.register_buffer(
            "diffusion",
            sparse_to_torch(diffusion_matrix(domain), torch.float64).to_sparse_csr(),
            persistent=False,
        )
        self.register_buffer("mass", domain.mass.clone(), persistent=False)
        self.register_eigenpairs("mode_eigenvalues", "modes", domain.eigenbasis(k))
        self._derive_spectral_buffers()

    def _derive_spectral_buffers(self) -> None:
        """(Re)build `basis`, `analysis`, `eigenvalues`, `positional` from the saved eigenpairs."""
        lam, phi = self.mode_eigenvalues, self.modes
        basis = phi[:, : self.num_modes]
        self.register_buffer("basis", basis.clone(), persistent=False)
        self.register_buffer(
            "analysis", (basis * self.mass.to(phi.dtype)[:, None]).T.contiguous(), persistent=False
        )
        scale = float(lam[1]) if lam.numel() > 1 and lam[1] > 0 else 1.0
        self.register_buffer("eigenvalues", lam[: self.num_modes] / scale, persistent=False)
        pe = phi[:, 1 : self.num_positional + 1] * math.sqrt(self.total_area)
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
