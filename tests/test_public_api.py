"""The public API is the packages' top level, and the examples use nothing else.

Every name of `manifold_aps.__all__` and `climate.__all__` resolves, is documented and is listed
in its package's docstring (the index the API reference starts from); the engines, priors,
flows and trainer are among them; the names whose modules load `torch_geometric` are imported on
first use only; the examples import only top-level names. Then the helpers that moved out of the
examples into the library: `posterior_scores`, `band_power_ratios`, `synthetic_stations`.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import REPO

import climate
import manifold_aps

PACKAGES = {"manifold_aps": manifold_aps, "climate": climate}
REQUIRED = {
    "manifold_aps": {
        # engines and their registry
        "DPS",
        "DAPS",
        "MGDM",
        "AmortizedFlowPosterior",
        "ImplicitGenerator",
        "AmortizedVI",
        "ExactGaussianPosterior",
        "GMRFPosterior",
        "ENGINES",
        "train_engine",
        "load_engine",
        "load_trained_engine",
        # priors, flows, training
        "GaussianPrior",
        "MaternGMRF",
        "ScorePrior",
        "load_prior",
        "train_prior",
        "ConditionalFlow",
        "FlowConfig",
        "Trainer",
        "TrainConfig",
        # operators, domains, scores, sparse algebra
        "Mask",
        "HeatBlur",
        "GaussianNoise",
        "HealpixSphere",
        "TriangleMesh",
        "weighted_rmse",
        "posterior_scores",
        "fit_gmrf",
        "SparseCholesky",
    },
    "climate": {
        "open_era5",
        "impute",
        "random_mask",
        "station_mask",
        "swath_mask",
        "GaussianImputer",
        "plot_imputation",
        "run_impute",
        "grid_file_dataset",
        "synthetic_stations",
    },
}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_public_name_resolves_is_documented_and_indexed(package):
    module = PACKAGES[package]
    exported = module.__all__
    assert exported == sorted(set(exported)), "__all__ must be sorted, without duplicates"
    assert REQUIRED[package] <= set(exported), sorted(REQUIRED[package] - set(exported))
    undocumented, unindexed = [], []
    for name in exported:
        obj = getattr(module, name)  # the lazily imported names resolve too
        if callable(obj) and not (obj.__doc__ or "").strip():
            undocumented.append(name)
        if f"`{name}`" not in module.__doc__:
            unindexed.append(name)
    assert undocumented == [], f"no docstring: {undocumented}"
    assert unindexed == [], f"not in the {package} docstring: {unindexed}"
    assert set(exported) <= set(dir(module))


def _type_checking_imports(path) -> dict[str, str]:
    """Name -> module of the imports under `if TYPE_CHECKING:` of the module at `path`."""
    names = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                names.update({alias.name: imp.module for alias in imp.names})
    return names


def test_the_lazy_names_are_the_type_checking_imports_and_public():
    lazy = manifold_aps._LAZY
    assert _type_checking_imports(REPO / "manifold_aps" / "__init__.py") == lazy
    assert set(lazy) <= set(manifold_aps.__all__)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        manifold_aps.NoSuchName  # noqa: B018


def test_import_manifold_aps_leaves_the_graph_networks_unloaded():
    code = (
        "import sys, manifold_aps\n"
        "assert 'torch_geometric' not in sys.modules, 'manifold_aps loaded torch_geometric'\n"
        "manifold_aps.ScorePrior\n"
        "assert 'torch_geometric' in sys.modules\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]


def _private_uses(path) -> list[str]:
    """Uses of `manifold_aps`/`climate` in a script other than their top-level public names."""
    tree = ast.parse(path.read_text(), str(path))
    bound = {}  # local name -> package, for `import climate` / `import manifold_aps as m`
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    if alias.name in PACKAGES:
                        bound[alias.asname or alias.name] = alias.name
                    else:
                        bad.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
            if node.module not in PACKAGES:
                bad.append(f"line {node.lineno}: from {node.module} import ...")
                continue
            public = PACKAGES[node.module].__all__
            bad += [
                f"line {node.lineno}: {node.module}.{a.name}"
                for a in node.names
                if a.name not in public
            ]
        elif isinstance(node, ast.ImportFrom) and node.level:
            bad.append(f"line {node.lineno}: a relative import")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and node.attr not in PACKAGES[bound[node.value.id]].__all__
        ):
            bad.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return bad


def test_the_examples_use_only_the_top_level_api():
    scripts = sorted((REPO / "examples").glob("*.py"))
    assert len(scripts) >= 4
    offenders = {path.name: _private_uses(path) for path in scripts}
    assert {name: uses for name, uses in offenders.items() if uses} == {}


def test_the_checker_sees_submodule_imports_and_attributes(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "import climate\n"
        "import manifold_aps.flows\n"
        "from manifold_aps import Mask, central_interval\n"
        "from manifold_aps.metrics import weighted_rmse\n"
        "from climate import not_public\n"
        "climate.open_era5\n"
        "climate.workflow.coarsen_grid\n"
    )
    assert _private_uses(script) == [
        "line 2: import manifold_aps.flows",
        "line 4: from manifold_aps.metrics import ...",
        "line 5: climate.not_public",
        "line 7: climate.workflow",
    ]


# -- the helpers moved out of the examples -------------------------------------------------------

DOMAIN = manifold_aps.HealpixSphere(2)


def test_posterior_scores_are_the_metrics_of_the_samples():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(2, DOMAIN.num_nodes, 1, generator=g, dtype=torch.float64)
    samples = truth + 0.5 * torch.randn(6, *truth.shape, generator=g, dtype=torch.float64)
    where = torch.rand(truth.shape, generator=g) < 0.6
    weight = DOMAIN.mass
    s = manifold_aps.posterior_scores(samples, truth, weight, where)
    lo, hi = manifold_aps.central_interval(samples, 0.9)
    expected = {
        "rmse_mean": manifold_aps.weighted_rmse(samples.mean(0), truth, weight, where),
        "crps": manifold_aps.crps_ensemble(samples, truth, weight, where),
        "coverage_90": manifold_aps.interval_coverage(lo, hi, truth, weight, where),
        "spread_skill": manifold_aps.spread_skill_ratio(samples, truth, weight, where),
    }
    assert set(s) == {*expected, "rmse_sample_median"}
    for key in expected:
        assert s[key] == pytest.approx(float(expected[key]), rel=1e-12), key
    per_sample = sorted(float(manifold_aps.weighted_rmse(x, truth, weight, where)) for x in samples)
    assert s["rmse_sample_median"] == pytest.approx((per_sample[2] + per_sample[3]) / 2)  # of 6
    exact = manifold_aps.posterior_scores(samples, truth, weight, where, mean=truth)
    assert exact["rmse_mean"] == 0.0 and exact["crps"] == s["crps"]
    one = manifold_aps.posterior_scores(samples[:1], truth, weight)
    assert np.isnan(one["spread_skill"]) and np.isfinite(one["crps"])


def test_band_power_ratios_against_the_maps_own_spectrum():
    import healpy as hp

    rng = np.random.default_rng(0)
    maps = rng.standard_normal((3, 12 * 4**2))  # nside 4: multipoles up to 11
    cls = np.stack([hp.anafast(m, lmax=11) for m in maps])
    bands = [(2, 5), (6, 11)]
    own = manifold_aps.band_power_ratios(maps[:1], cls[0], bands)
    assert own == pytest.approx([1.0, 1.0], rel=1e-12)
    doubled = manifold_aps.band_power_ratios(2 * maps, cls.mean(0), bands)
    per_map = [(cls[:, a : b + 1].sum(1) / cls.mean(0)[a : b + 1].sum()).mean() for a, b in bands]
    assert doubled == pytest.approx([4 * r for r in per_map], rel=1e-12)
    assert np.isnan(manifold_aps.band_power_ratios(np.zeros((0, 192)), cls[0], bands)).all()
    assert np.isnan(manifold_aps.band_power_ratios(maps * np.nan, cls[0], bands)).all()


def _grid(nlat: int = 20, nlon: int = 30) -> xr.DataArray:
    lat = np.linspace(60.0, 40.0, nlat)
    lon = np.linspace(-10.0, 19.0, nlon)
    return xr.DataArray(
        np.zeros((nlat, nlon)),
        coords={"latitude": lat, "longitude": lon},
        dims=("latitude", "longitude"),
    )


def test_synthetic_stations_fall_in_distinct_cells_of_the_grid():
    like = _grid()
    frame = climate.synthetic_stations(like, 0.3, seed=4)
    assert list(frame.columns) == ["station", "lat", "lon"] and len(frame) == 180
    assert frame["station"].iloc[0] == "synthetic-00000"
    observed = climate.station_mask(like, frame)
    assert int(observed.sum()) == 180 and observed.attrs["num_dropped"] == 0
    assert climate.synthetic_stations(like, 0.3, seed=4).equals(frame)
    assert not climate.synthetic_stations(like, 0.3, seed=5).equals(frame)


def test_synthetic_stations_refuse_a_share_outside_0_1():
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\], got 1.5"):
        climate.synthetic_stations(_grid(), 1.5)
    with pytest.raises(ValueError, match="at least 2 latitudes and 2 longitudes, got 1 x 30"):
        climate.synthetic_stations(_grid(nlat=1), 0.5)
