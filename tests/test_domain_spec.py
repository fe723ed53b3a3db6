"""Domain specs rebuild every kind of domain exactly, through a weights-only torch file."""

import numpy as np
import pytest
import torch
import trimesh

from manifold_aps.geometry import (
    Domain,
    DomainSpecError,
    HealpixSphere,
    IcosphereMesh,
    PlanarGrid,
    SphereGrid,
    TriangleMesh,
    domain_from_spec,
    domain_spec,
)


def _domains():
    box = trimesh.creation.icosphere(subdivisions=1)
    regional = SphereGrid(np.arange(60, 49.5, -0.5), np.arange(-10, 2.25, 0.5))
    plain = PlanarGrid(4, 5)
    generic = Domain(
        plain._positions, plain._mass, np.array([[0, 1, 2], [1, 2, 3]]), [1.0, 2.0, 0.5], name="g"
    )
    return {
        "global grid": SphereGrid(np.arange(90, -91, -15.0), np.arange(0, 360, 15.0)),
        "regional grid": regional,
        "coarsened grid": regional.coarsen().domain,
        "healpix ring": HealpixSphere(4),
        "healpix nested": HealpixSphere(4, nest=True),
        "icosphere": IcosphereMesh(2),
        "mesh": TriangleMesh(
            box.vertices * [1.0, 2.0, 0.5], box.faces, mass="voronoi", name="ellipsoid"
        ),
        "plane": PlanarGrid(6, 3, spacing=(0.5, 2.0)),
        "generic": generic,
    }


@pytest.mark.parametrize("name", list(_domains()))
def test_a_spec_rebuilds_the_domain_through_a_weights_only_file(name, tmp_path):
    domain = _domains()[name]
    path = tmp_path / "spec.pt"
    torch.save(domain_spec(domain), path)
    rebuilt = domain_from_spec(torch.load(path, weights_only=True))
    assert type(rebuilt) is type(domain)
    assert rebuilt.fingerprint == domain.fingerprint
    assert rebuilt.num_nodes == domain.num_nodes
    np.testing.assert_array_equal(rebuilt.mass.numpy(), domain.mass.numpy())
    np.testing.assert_array_equal(rebuilt.stiffness().toarray(), domain.stiffness().toarray())


def test_a_spec_of_another_geometry_is_refused_naming_both():
    spec = domain_spec(HealpixSphere(4))
    spec["fingerprint"] = "0" * 20
    with pytest.raises(DomainSpecError, match="not the recorded 0000"):
        domain_from_spec(spec)
    with pytest.raises(DomainSpecError, match="unknown domain type"):
        domain_from_spec({**spec, "type": "Torus"})
    with pytest.raises(DomainSpecError, match="lacks 'nside'"):
        domain_from_spec({k: v for k, v in spec.items() if k != "nside"})
