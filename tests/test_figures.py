"""Figures people read: round ticks with units, coastlines on Earth maps, titles, attribution.

Colour bars tick at round numbers and carry the field's units; HEALPix maps of Earth fields have
coastlines and sky maps none; the figure title stays clear of the panel titles; the footer
credits the data actually shown.

All on the Agg backend, on tiny domains; each test is a second or two.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr

from climate.plot import data_attribution, panels_figure
from climate.workflow import ImputeRequest, run_impute
from manifold_aps import HealpixSphere, IcosphereMesh, PlanarGrid
from manifold_aps.plotting import ATTRIBUTION_GID, COASTLINE_GID, signals_figure

LO, HI = 217.614, 310.2  # healpy's own colour bar labelled exactly these two numbers


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _ramp(n: int) -> np.ndarray:
    return np.linspace(LO, HI, n)


def _colour_bars(fig):
    fig.canvas.draw()
    return [ax._colorbar for ax in fig.axes if hasattr(ax, "_colorbar")]


def _shown_tick_values(bar) -> list[float]:
    """The numbers written on a colour bar, within its range, as read from their labels."""
    lo, hi = sorted((bar.norm.vmin, bar.norm.vmax))
    values = []
    for value, label in zip(
        bar.long_axis.get_majorticklocs(), bar.long_axis.get_ticklabels(), strict=True
    ):
        if lo - 1e-9 <= value <= hi + 1e-9:
            values.append(float(label.get_text().replace("\u2212", "-")))
    return values


def _assert_round(values: list[float]) -> None:
    """Evenly spaced multiples of a step of 1, 2 or 5 times a power of ten."""
    assert len(values) >= 2, values
    step = values[1] - values[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in (1.0, 2.0, 5.0), values
    assert all(abs(v / step - round(v / step)) < 1e-6 for v in values), values
    assert np.allclose(np.diff(values), step), values


def _footer(fig) -> list[str]:
    return [t.get_text() for t in fig.texts if t.get_gid() == ATTRIBUTION_GID]


def _earth_field(units: str = "K", **attrs) -> xr.DataArray:
    lat, lon = np.linspace(50, 58, 9), np.linspace(-10, 2, 13)
    values = np.linspace(LO, HI, lat.size * lon.size).reshape(lat.size, lon.size)
    return xr.DataArray(
        values,
        dims=("latitude", "longitude"),
        coords={"latitude": lat, "longitude": lon},
        attrs={"units": units, **attrs},
    )


DOMAINS = {
    "healpix": lambda: HealpixSphere(4),
    "mesh": lambda: IcosphereMesh(1),
    "planar": lambda: PlanarGrid(6, 8),
}


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_core_colour_bars_have_round_ticks_and_the_units_as_label(name):
    domain = DOMAINS[name]()
    ramp = _ramp(domain.num_nodes)
    fig = signals_figure(
        domain, [("truth", ramp), ("std", ramp / 1000)], shared_scale=[True, False], units="K"
    )
    bars = _colour_bars(fig)
    assert len(bars) == 2
    for bar in bars:
        _assert_round(_shown_tick_values(bar))
        assert bar.long_axis.get_label_text() == "K"


def test_climate_colour_bars_have_round_ticks_and_the_fields_units():
    field = _earth_field(units="m s**-1")
    fig = panels_figure([("truth", field), ("std", field / 1000)], shared_scale=[True, False])
    bars = _colour_bars(fig)
    assert len(bars) == 2
    for bar in bars:
        _assert_round(_shown_tick_values(bar))
        assert bar.long_axis.get_label_text() == "m s**-1"


def test_an_earth_healpix_map_has_coastlines_east_to_the_right_and_a_sky_map_none():
    domain = HealpixSphere(4)
    ramp = _ramp(domain.num_nodes)
    earth = signals_figure(domain, [("t2m", ramp), ("mean", ramp)], coastlines=True)
    sky = signals_figure(domain, [("WMAP", ramp)])
    maps = [ax for ax in earth.axes if hasattr(ax, "proj")]
    assert len(maps) == 2
    for ax in maps:
        coast = [line for line in ax.lines if line.get_gid() == COASTLINE_GID]
        assert len(coast) > 50 and len(coast) == len(ax.lines)
        assert ax.proj.ang2xy(90.0, 0.0, lonlat=True)[0] > 0  # 90 deg E is right of centre
    (sky_map,) = [ax for ax in sky.axes if hasattr(ax, "proj")]
    assert len(sky_map.lines) == 0
    assert sky_map.proj.ang2xy(90.0, 0.0, lonlat=True)[0] < 0  # the sky as seen from inside


def test_coastlines_on_a_domain_that_is_not_a_healpix_map_are_refused():
    domain = IcosphereMesh(1)
    with pytest.raises(ValueError, match="coastlines=True needs a HealpixSphere domain"):
        signals_figure(domain, [("x", np.zeros(domain.num_nodes))], coastlines=True)


def test_the_figure_title_does_not_overlap_two_line_panel_titles_of_mesh_renders():
    domain = IcosphereMesh(1)
    ramp = _ramp(domain.num_nodes)
    fig = signals_figure(
        domain,
        [("truth", ramp), ("observed 10 %, shown by\nnearest observed vertex", ramp)],
        suptitle="mesh-bunny, inpainting: exact Gaussian posterior",
    )
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    top = fig._suptitle.get_window_extent(renderer)
    titles = [ax.title for ax in fig.axes if ax.title.get_text()]
    assert len(titles) == 2
    for title in titles:
        assert not top.overlaps(title.get_window_extent(renderer)), title.get_text()


def test_the_core_footer_is_the_attribution_given_and_none_without():
    domain = HealpixSphere(4)
    ramp = _ramp(domain.num_nodes)
    credit = "WMAP 7-year W band: NASA/WMAP Science Team, public domain"
    assert _footer(signals_figure(domain, [("m", ramp)], attribution=credit)) == [credit]
    bare = signals_figure(domain, [("m", ramp)])
    assert _footer(bare) == [] and not any("Copernicus" in t.get_text() for t in bare.texts)


def test_the_climate_footer_comes_from_the_data_never_a_fixed_era5_credit():
    shown = _earth_field(source="my_model_run.nc", institution="Some Lab", license="CC0-1.0")
    assert _footer(panels_figure([("x", shown)])) == ["Data: my_model_run.nc (Some Lab). CC0-1.0"]
    assert _footer(panels_figure([("x", _earth_field())])) == []  # nothing known, nothing said
    assert _footer(panels_figure([("x", shown)], attribution="given")) == ["given"]
    assert data_attribution({"attribution": "as the file says"}, shown) == "as the file says"
    assert data_attribution({}, {"license": "CC-BY-4.0"}) == "CC-BY-4.0"


def test_the_shipped_era5_sample_is_credited_to_copernicus():
    from climate.demo import default_sample_path

    with xr.open_dataset(default_sample_path()) as ds:
        line = data_attribution(ds)
    assert line.startswith("Data: ERA5 2 m temperature") and "Copernicus" in line


def test_impute_carries_the_input_files_credit_to_its_output_and_plot(tmp_path):
    field = _earth_field().expand_dims(time=np.arange(12).astype("datetime64[h]"))
    rng = np.random.default_rng(0)
    field = field + rng.normal(0, 1, field.shape)
    field.attrs = {"units": "K", "long_name": "2 metre temperature"}
    ds = field.to_dataset(name="t2m")
    ds.attrs.update(institution="Some Lab", license="CC0-1.0")
    ds.to_netcdf(tmp_path / "in.nc")
    out, png = tmp_path / "out.nc", tmp_path / "map.png"
    request = ImputeRequest(
        input=str(tmp_path / "in.nc"),
        masks=("random:0.5",),
        samples=2,
        output=str(out),
        plot=str(png),
        progress=False,
    )
    run_impute(request, log=lambda line: None)
    with xr.open_dataset(out) as written:
        assert written.attrs["license"] == "CC0-1.0"
        assert data_attribution(written) == "Data: in.nc (Some Lab). CC0-1.0"
    assert png.stat().st_size > 5_000


def test_impute_attribution_given_credits_a_file_that_names_none(tmp_path):
    field = _earth_field().expand_dims(time=np.arange(6).astype("datetime64[h]"))
    field = field + np.random.default_rng(1).normal(0, 1, field.shape)
    field.attrs = {"units": "K"}
    field.to_dataset(name="t2m").to_netcdf(tmp_path / "in.nc")
    credit = "Contains modified Copernicus Climate Change Service information 2024"
    out = tmp_path / "out.nc"
    request = ImputeRequest(
        input=str(tmp_path / "in.nc"),
        masks=("random:0.5",),
        samples=2,
        output=str(out),
        attribution=credit,
        progress=False,
    )
    run_impute(request, log=lambda line: None)
    with xr.open_dataset(out) as written:
        assert data_attribution(written) == credit
