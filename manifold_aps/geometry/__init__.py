"""Domains: the geometry (nodes, masses, Laplacian, eigenbasis, hierarchy) signals live on."""

from manifold_aps.geometry.domain import Coarsening, Domain
from manifold_aps.geometry.grids import PlanarGrid, SphereGrid
from manifold_aps.geometry.mesh import TriangleMesh
from manifold_aps.geometry.spec import DomainSpecError, domain_from_spec, domain_spec
from manifold_aps.geometry.sphere import HealpixSphere, IcosphereMesh, SphericalDomain

__all__ = [
    "Coarsening",
    "Domain",
    "DomainSpecError",
    "HealpixSphere",
    "IcosphereMesh",
    "PlanarGrid",
    "SphereGrid",
    "SphericalDomain",
    "TriangleMesh",
    "domain_from_spec",
    "domain_spec",
]
