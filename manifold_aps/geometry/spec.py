"""Domain specs: what rebuilds a domain, in plain types and tensors (checkpoints carry them).

`domain_spec(domain)` describes a domain by its constructor's arguments — the grid coordinates
of a `SphereGrid`, the `nside` and ordering of a `HealpixSphere`, the level of an
`IcosphereMesh`, the vertices and faces of a `TriangleMesh`, the size of a `PlanarGrid` — or,
for any other `Domain`, by its nodes, masses and edges. `domain_from_spec(spec)` rebuilds it and
checks that the fingerprint is the one recorded, so a checkpoint opens on exactly the domain it
was trained on without the dataset that made it. Every value is a tensor, a number, a string or
a list of them, so a spec loads with `torch.load(weights_only=True)`.

    >>> from manifold_aps.geometry import HealpixSphere
    >>> d = HealpixSphere(2)
    >>> domain_from_spec(domain_spec(d)).fingerprint == d.fingerprint
    True
"""

from __future__ import annotations

import numpy as np
import torch

from manifold_aps.geometry.domain import Domain
from manifold_aps.geometry.grids import PlanarGrid, SphereGrid
from manifold_aps.geometry.mesh import TriangleMesh
from manifold_aps.geometry.sphere import HealpixSphere, IcosphereMesh

__all__ = ["DomainSpecError", "domain_from_spec", "domain_spec"]

SPEC_VERSION = 1


class DomainSpecError(ValueError):
    """A spec that does not rebuild a domain (unknown type, missing field, another fingerprint)."""


def _tensor(x, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.array(x, copy=True), dtype=dtype)


def domain_spec(domain: Domain) -> dict:
    """The plain-type description that `domain_from_spec` rebuilds `domain` from.

    Keys: `type` (the class name), `version`, `fingerprint`, `repr`, and the constructor's
    arguments of that type (the generic "Domain" spec: `positions (N, 3)`, `mass (N,)`,
    `edge_index (2, E)`, `edge_weight (E,)`, `name`).
    """
    if not isinstance(domain, Domain):
        raise TypeError(f"domain must be a manifold_aps Domain, got {type(domain).__name__}")
    kind = type(domain)
    if kind is SphereGrid:
        args = {
            "lat_deg": _tensor(domain.lat_deg),
            "lon_deg": _tensor(domain.lon_deg),
            "lat_bounds_deg": _tensor(domain.lat_bounds_deg),
            "lon_bounds_deg": _tensor(domain.lon_bounds_deg),
        }
    elif kind is HealpixSphere:
        args = {"nside": domain.nside, "nest": domain.nest}
    elif kind is IcosphereMesh:
        args = {"level": domain.level}
    elif kind is TriangleMesh:
        args = {
            "vertices": _tensor(domain.vertices),
            "faces": _tensor(domain.faces, torch.int64),
            "mass": domain.mass_rule,
            "name": domain.name,
        }
    elif kind is PlanarGrid:
        args = {"ny": domain.ny, "nx": domain.nx, "spacing": list(domain.spacing)}
    else:  # any other domain: its nodes, masses and conductances
        w = domain._weights.tocoo()
        upper = w.row < w.col
        kind = Domain
        args = {
            "positions": _tensor(domain._positions),
            "mass": _tensor(domain._mass),
            "edge_index": _tensor(np.stack([w.row[upper], w.col[upper]]), torch.int64),
            "edge_weight": _tensor(w.data[upper]),
            "name": domain.name,
        }
    return {
        "type": kind.__name__,
        "version": SPEC_VERSION,
        "fingerprint": domain.fingerprint,
        "repr": repr(domain),
        **args,
    }


def _numpy(x):
    return x.numpy() if isinstance(x, torch.Tensor) else x


def domain_from_spec(spec: dict) -> Domain:
    """The domain a `domain_spec` describes, checked against its recorded fingerprint.

    Raises:
        DomainSpecError: not a spec, an unknown type or version, a missing argument, or a
            rebuilt domain whose fingerprint is not the recorded one (e.g. another healpy).
    """
    if not isinstance(spec, dict) or "type" not in spec:
        raise DomainSpecError(f"not a domain spec: {type(spec).__name__}")
    if spec.get("version") != SPEC_VERSION:
        raise DomainSpecError(
            f"domain spec version {spec.get('version')!r}, this code reads {SPEC_VERSION}"
        )
    a = {k: _numpy(v) for k, v in spec.items()}
    try:
        if a["type"] == "SphereGrid":
            domain = SphereGrid(
                a["lat_deg"],
                a["lon_deg"],
                lat_bounds_deg=a["lat_bounds_deg"],
                lon_bounds_deg=a["lon_bounds_deg"],
            )
        elif a["type"] == "HealpixSphere":
            domain = HealpixSphere(int(a["nside"]), nest=bool(a["nest"]))
        elif a["type"] == "IcosphereMesh":
            domain = IcosphereMesh(int(a["level"]))
        elif a["type"] == "TriangleMesh":
            domain = TriangleMesh(a["vertices"], a["faces"], mass=a["mass"], name=a["name"])
        elif a["type"] == "PlanarGrid":
            domain = PlanarGrid(int(a["ny"]), int(a["nx"]), spacing=tuple(a["spacing"]))
        elif a["type"] == "Domain":
            domain = Domain(
                a["positions"], a["mass"], a["edge_index"], a["edge_weight"], name=a["name"]
            )
        else:
            raise DomainSpecError(f"unknown domain type {a['type']!r} in the spec")
    except KeyError as err:
        raise DomainSpecError(f"the {a['type']} spec lacks {err.args[0]!r}") from err
    recorded = spec.get("fingerprint")
    if recorded is not None and domain.fingerprint != recorded:
        raise DomainSpecError(
            f"the spec rebuilds {domain!r} with fingerprint {domain.fingerprint}, "
            f"not the recorded {recorded} "
            f"({spec.get('repr')}); the geometry code or a library it uses changed"
        )
    return domain
