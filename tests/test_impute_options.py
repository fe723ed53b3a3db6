"""`manifold-aps impute` options for gappy fields (issue 15).

Period lists, pass-through of complete fields by every engine, per-field progress,
partial-block `--coarsen` with `--output-grid native`, and `--truth` scores.

CLI behaviour runs from a subprocess on a 16-hour subset of the shipped ERA5 sample with 70 % of
the cells of its last 4 hours made NaN (real gaps) and the complete file as the truth; the
gaussian model is fitted once (alpha 2) and passed as `--checkpoint`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import refused, run_cli

from climate import open_era5
from climate.demo import default_sample_path
from climate.era5 import grid_domain
from climate.impute import _Progress, impute
from climate.model import FieldStandardizer, GaussianImputer, ScoreImputer
from climate.workflow import ImputeRequest, coarsen_grid, parse_period, run_impute
from manifold_aps.priors import MaternGMRF

HOURS = 16  # of the sample: 0-11 complete (the fit), 12-15 with gaps except hour 13
GAPPY_HOURS = (12, 14, 15)


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli("impute", *args, cwd=cwd)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Input files `full.nc`, `gappy.nc` and gaussian models `coarse.pt` and `native.pt`.

    `full.nc` has 16 complete hours, `gappy.nc` 70 % NaN at hours 12, 14, 15; the gaussian models
    are of the 2x2-coarsened grid (`coarse.pt`) and of the input grid (`native.pt`).
    """
    folder = tmp_path_factory.mktemp("impute_options")
    full = xr.open_dataset(default_sample_path()).isel(time=slice(0, HOURS)).load()
    full.to_netcdf(folder / "full.nc")
    values = full.t2m.values.copy()
    gaps = np.random.default_rng(0).random(values.shape) < 0.7
    gaps[[h for h in range(HOURS) if h not in GAPPY_HOURS]] = False
    values[gaps] = np.nan
    full.assign(t2m=full.t2m.copy(data=values)).to_netcdf(folder / "gappy.nc")
    train = open_era5(folder / "full.nc", "t2m").t2m.isel(time=slice(0, 12))
    GaussianImputer.fit(coarsen_grid(train, 2), alpha=2).save(folder / "coarse.pt")
    GaussianImputer.fit(train, alpha=2).save(folder / "native.pt")
    return {
        name: folder / f"{name}.{ext}"
        for name, ext in (("full", "nc"), ("gappy", "nc"), ("coarse", "pt"), ("native", "pt"))
    }


def _small_gaussian(field: xr.DataArray) -> GaussianImputer:
    """A gaussian model of `field`'s grid with fixed parameters (no fit)."""
    domain = grid_domain(field)
    n = domain.num_nodes
    standardizer = FieldStandardizer(np.full((1, n), 280.0), np.full(n, 2.0))
    prior = MaternGMRF(domain, alpha=2, kappa=30.0, tau=0.05)
    return GaussianImputer("t2m", "K", domain, 0.1, standardizer, prior, nugget=0.01)


def _field(hours: int = 3, hidden: tuple[int, ...] = (0, 2)) -> xr.DataArray:
    """A small real field (8 x 10 cells) with NaN cells at the `hidden` hours only."""
    da = (
        open_era5(default_sample_path(), "t2m")
        .t2m.isel(time=slice(0, hours), latitude=slice(0, 8), longitude=slice(0, 10))
        .load()
    )
    values = da.values.copy()
    for h in hidden:
        values[h, ::3, ::2] = np.nan
    return da.copy(data=values)


# ---------------------------------------------------------------------------------- 1. period lists
def test_a_period_list_selects_the_union_of_its_items_in_time_order():
    times = xr.DataArray(
        np.arange("2019-03-01T00", "2019-03-04T00", dtype="datetime64[h]"), dims="time"
    )
    da = xr.DataArray(np.arange(times.size), coords={"time": times}, dims="time")
    picked = parse_period("2019-03-03T05,2019-03-01T00:2019-03-01T02,2019-03-02").select(da)
    assert picked.values.tolist() == [
        0,
        1,
        2,
        *range(24, 48),
        53,
    ]  # a date: its day; an hour: that hour
    assert parse_period("2019-03-01T12:00").select(da).values.tolist() == [
        12
    ]  # one stamp with minutes
    assert parse_period("2019-03-01T01:2019-03-01T03").select(da).values.tolist() == [
        1,
        2,
        3,
    ]  # one range, as before


def test_period_contains_marks_the_times_it_holds_and_allows_items_that_hold_none():
    times = np.arange("2019-03-01T00", "2019-03-04T00", dtype="datetime64[h]")
    period = parse_period("2019-03-01T22:2019-03-02T01,2019-03-10", "fit_period")
    inside = period.contains(times)  # 2019-03-10 holds none of them: no error here
    assert np.flatnonzero(inside).tolist() == [22, 23, 24, 25]
    assert np.array_equal(period.contains(xr.DataArray(times, dims="time")), inside)
    with pytest.raises(ValueError, match="selects no time step"):
        period.indices(xr.DataArray(times, dims="time"))  # indices asks every item to select


def test_overlapping_period_items_are_refused_by_the_cli(files, tmp_path):
    out = tmp_path / "out.nc"
    res = _cli(
        "--input",
        files["gappy"],
        "--checkpoint",
        files["native"],
        "--period",
        "2019-03-01T12,2019-03-01T12:2019-03-01T13",
        "--samples",
        "2",
        "--output",
        out,
        "--quiet",
        cwd=tmp_path,
    )
    refused(
        res,
        "--period items '2019-03-01T12' and '2019-03-01T12:2019-03-01T13' overlap: "
        "both select 2019-03-01T12:00",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "option,period,said",
    [
        ("period", "2019-03-01T12,2019-04-01", "--period item '2019-04-01' selects no time step"),
        (
            "fit_period",
            "2019-03-01T00:2019-03-01T05,2019-03-01T05",
            "--fit-period items '2019-03-01T00:2019-03-01T05' and '2019-03-01T05' overlap",
        ),
        (
            "period",
            "2019-03-01T12,,2019-03-01T13",
            "--period '2019-03-01T12,,2019-03-01T13' has an empty item",
        ),
    ],
    ids=["selects-nothing", "fit-period-overlap", "empty-item"],
)
def test_period_items_that_overlap_or_select_nothing_are_refused(
    files, tmp_path, option, period, said
):
    out = tmp_path / "out.nc"
    with pytest.raises(ValueError, match=re.escape(said)):
        run_impute(
            ImputeRequest(
                input=str(files["gappy"]), **{option: period}, output=str(out), progress=False
            ),
            log=lambda line: None,
        )
    assert not out.exists()


# ------------------------------------------------------------------ 2. complete fields pass through
class _CountingSampler:
    """A stand-in for a distilled engine: records the batch sizes it is asked for, draws noise."""

    def __init__(self):
        self.batches: list[int] = []

    def sample(self, y, operator, n, rng=None):
        self.batches.append(y.shape[0])
        return y[None] + torch.randn((n, *y.shape), generator=rng, dtype=y.dtype)


def test_a_score_engine_passes_complete_fields_through_without_a_network_call():
    field = _field(hours=3, hidden=(1,))
    sampler = _CountingSampler()
    model = ScoreImputer("t2m", "K", grid_domain(field), 0.1, sampler, "aps", "counting stand-in")
    out = impute(field, None, model, n_samples=2, progress=False)
    assert sampler.batches == [1]  # only the field with hidden cells was sampled
    for h in (0, 2):  # the complete ones: their values, no spread
        np.testing.assert_array_equal(
            out.t2m_samples.values[:, h], np.broadcast_to(field.values[h], (2, 8, 10))
        )
        assert (out.t2m_std.values[h] == 0).all()
    sampler.batches.clear()
    impute(field.isel(time=[0, 2]), None, model, n_samples=2, progress=False)
    assert sampler.batches == []  # nothing hidden anywhere: no call at all


# ------------------------------------------- 3. per-field progress (and 2. for the gaussian engine)
def test_the_progress_bar_advances_per_field_not_per_block(monkeypatch):
    field = _field(hours=4, hidden=(0, 1, 3))
    steps: list[int] = []
    monkeypatch.setattr(_Progress, "update", lambda self, n: steps.append(n))
    out = impute(field, None, _small_gaussian(field), n_samples=2, chunk_size=4, progress=True)
    assert steps == [1, 1, 1, 1]  # one block of 4 fields, reported field by field
    # the complete field (hour 2) passes through the gaussian engine too: its values, std 0
    np.testing.assert_array_equal(
        out.t2m_samples.values[:, 2], np.broadcast_to(field.values[2], (2, 8, 10))
    )
    assert (out.t2m_std.values[2] == 0).all() and (
        out.t2m_std.values[1][np.isnan(field.values[1])] > 0
    ).all()


# ---------------------------------------------- 4. partial blocks, --output-grid native, 5. --truth
def test_coarsen_averages_the_observed_cells_of_a_block():
    da = xr.DataArray(
        [[1.0, np.nan, 5.0, 7.0], [3.0, np.nan, np.nan, np.nan]],
        coords={"latitude": [1.0, 0.0], "longitude": [0.0, 1.0, 2.0, 3.0]},
        dims=("latitude", "longitude"),
    )
    coarse = coarsen_grid(da, 2)
    np.testing.assert_array_equal(coarse.values, [[2.0, 6.0]])  # means of the observed cells
    all_missing = da.where(da.longitude < 2)  # the second block has no observed cell
    assert np.isnan(coarsen_grid(all_missing, 2).values[0, 1])


def test_native_output_grid_keeps_observed_cells_and_scores_against_truth(files, tmp_path):
    out = tmp_path / "native.nc"
    period = "2019-03-01T12,2019-03-01T14:2019-03-01T15"
    res = _cli(
        "--input",
        files["gappy"],
        "--checkpoint",
        files["coarse"],
        "--coarsen",
        "2",
        "--output-grid",
        "native",
        "--period",
        period,
        "--truth",
        files["full"],
        "--samples",
        "2",
        "--output",
        out,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        "gaussian posterior of one field" in res.stdout
        and "sparse Cholesky factorisation" in res.stdout
    )
    truth_line = next(
        line
        for line in res.stdout.splitlines()
        if f"have a value in --truth {files['full']}" in line
    )
    rmse = float(truth_line.split("RMSE of the mean ")[1].split(",")[0])
    assert 0.05 < rmse < 2.0  # K, at the native cells hidden in the input
    assert "imputing t2m (gaussian)" in res.stderr and "3/3" in res.stderr  # the per-field bar
    gappy = open_era5(files["gappy"], "t2m").t2m.isel(time=list(GAPPY_HOURS)).load()
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert ds.t2m_mean.shape == gappy.shape  # the input grid, the three selected hours
        np.testing.assert_array_equal(ds.time.values, gappy.time.values)
        seen = gappy.notnull().values
        np.testing.assert_array_equal(ds.observed.values.astype(bool), seen)
        np.testing.assert_array_equal(ds.t2m_mean.values[seen], gappy.values[seen])  # bit for bit
        np.testing.assert_array_equal(
            ds.t2m_samples.values[:, seen], np.broadcast_to(gappy.values[seen], (2, seen.sum()))
        )
        assert (ds.t2m_std.values[seen] == 0).all()
        # a block with no observed cell: one value over its 2x2 cells, with spread
        blocks = seen[:, :32, :48].reshape(3, 16, 2, 24, 2).any((2, 4))
        t, i, j = np.argwhere(~blocks)[0]
        cell = ds.t2m_mean.values[t, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
        assert (cell == cell[0, 0]).all() and (ds.t2m_std.values[t, 2 * i, 2 * j] > 0)
        assert "--output-grid native" in ds.attrs["history"]


def test_truth_scores_are_returned_on_the_coarse_grid(files, tmp_path):
    request = ImputeRequest(
        input=str(files["gappy"]),
        checkpoint=str(files["coarse"]),
        coarsen=2,
        period="2019-03-01T14",
        truth=str(files["full"]),
        samples=2,
        output=str(tmp_path / "coarse.nc"),
        progress=False,
    )
    lines: list[str] = []
    scores = run_impute(request, log=lines.append)
    assert set(scores) == {"truth"}  # no hidden cell has a value in the input itself
    assert 0.05 < scores["truth"]["rmse_mean"] < 2.0 and scores["truth"]["num_samples"] == 2
    assert any("have a value in --truth" in line and "RMSE of the mean" in line for line in lines)


def test_a_truth_file_on_another_grid_or_without_the_times_is_refused(files, tmp_path):
    truth, out = tmp_path / "truth.nc", tmp_path / "out.nc"
    with xr.open_dataset(files["full"]) as ds:
        ds.isel(latitude=slice(0, 30)).to_netcdf(truth)
        ds.isel(time=slice(0, 13)).to_netcdf(tmp_path / "short.nc")
    res = _cli(
        "--input",
        files["gappy"],
        "--checkpoint",
        files["native"],
        "--period",
        "2019-03-01T12:2019-03-01T14",
        "--truth",
        truth,
        "--samples",
        "2",
        "--output",
        out,
        "--quiet",
        cwd=tmp_path,
    )
    refused(
        res,
        f"--truth {truth} is on another grid than the input",
        "latitude (30,)",
        "not latitude (33,)",
    )
    request = ImputeRequest(
        input=str(files["gappy"]),
        checkpoint=str(files["native"]),
        truth=str(tmp_path / "short.nc"),
        period="2019-03-01T12:2019-03-01T14",
        output=str(out),
        progress=False,
    )
    with pytest.raises(
        ValueError, match="short.nc lacks 2 of the 3 imputed time steps, first 2019-03-01T13:00"
    ):
        run_impute(request, log=lambda line: None)
    assert not out.exists()
