"""Cartopy maps of imputations: truth, observations, posterior mean and spread; offline coasts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from climate.schema import LATITUDE, LONGITUDE, TIME, VALUES
from manifold_aps.plotting import (
    ATTRIBUTION_GID,
    add_attribution,
    add_round_colorbar,
    healpix_panel,
    natural_earth_dir,
    place_suptitle,
)

__all__ = [
    "ATTRIBUTION_ATTRS",
    "configure_cartopy_offline",
    "data_attribution",
    "panels_figure",
    "plot_imputation",
    "plot_panels",
]

# the attributes (CF / ACDD) that credit a data file, carried from an input to its imputation
ATTRIBUTION_ATTRS = ("attribution", "acknowledgement", "institution", "license")


def configure_cartopy_offline() -> str:
    """Point cartopy at local Natural Earth shapefiles; returns the folder used.

    `$CARTOPY_DATA_DIR` wins when set; otherwise the 1:110m coastlines shipped in the package
    (`manifold_aps.plotting.natural_earth_dir`).
    """
    import cartopy

    folder = natural_earth_dir()
    cartopy.config["pre_existing_data_dir"] = folder
    return folder


def data_attribution(*sources) -> str:
    """The footer naming the data shown, from the attributes of the first source that has any.

    An `attribution` (or `acknowledgement`) attribute is taken as it is; otherwise the line is
    built from `source` (file or product), `institution` and `license`, e.g. "Data:
    era5_t2m_uk_2019-03.nc. CC-BY-4.0 (ERA5): contains modified Copernicus ...". Nothing is
    assumed: data without such attributes get an empty line (no footer).

    Arguments:
        *sources: Datasets, DataArrays or attribute dicts, most specific first.

    Returns:
        the attribution line, or "".
    """
    for source in sources:
        attrs = source if isinstance(source, dict) else getattr(source, "attrs", None) or {}
        given = attrs.get("attribution") or attrs.get("acknowledgement")
        if given:
            return str(given).strip()
        origin, institution, licence = (
            str(attrs.get(k, "") or "").strip() for k in ("source", "institution", "license")
        )
        named = f"{origin} ({institution})" if origin and institution else origin or institution
        parts = ([f"Data: {named}"] if named else []) + ([licence] if licence else [])
        if parts:
            return ". ".join(parts)
    return ""


def panels_figure(
    panels: list[tuple[str, xr.DataArray]],
    *,
    title: str = "",
    units: str | None = None,
    shared_scale: list[bool] | None = None,
    cmaps: list[str] | None = None,
    attribution: str | None = None,
):
    """A row of maps, one per `(label, field(latitude, longitude))`, with coastlines.

    Fields with `shared_scale[i]` True share one colour range (e.g. truth, observed, mean);
    the others (e.g. a standard deviation) get their own. NaN cells are left blank. A global
    grid is drawn in the Robinson projection, a regional one in plate carrée; HEALPix fields
    (pixels along `values`, RING unless their `healpix_ordering` attribute says "nested") in
    healpy's Mollweide view with east to the right, NaN pixels grey.

    Arguments:
        panels: `(panel title, field)` pairs; the fields share one grid.
        title: the figure title (constrained layout keeps it above the panel titles).
        units: the colour bars' label; default the first field's `units` attribute.
        shared_scale: per panel, whether it shares the common colour range (default all).
        cmaps: per panel, a matplotlib colour map name (default "RdYlBu_r").
        attribution: the footer naming the source of the data shown; default
            `data_attribution` of the first field ("" for none).

    Returns:
        the matplotlib `Figure` (close it with `matplotlib.pyplot.close`).
    """
    import cartopy.crs as ccrs
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configure_cartopy_offline()
    n = len(panels)
    shared_scale = shared_scale or [True] * n
    cmaps = cmaps or ["RdYlBu_r"] * n
    shared = [np.asarray(f) for (_, f), s in zip(panels, shared_scale, strict=True) if s]
    vmin = float(np.nanmin([np.nanmin(a) for a in shared])) if shared else None
    vmax = float(np.nanmax([np.nanmax(a) for a in shared])) if shared else None
    first = panels[0][1]
    units = str(first.attrs.get("units", "")) if units is None else units
    attribution = data_attribution(first) if attribution is None else attribution
    if VALUES in first.dims:
        fig = plt.figure(figsize=(4.2 * n, 3.0))
        nest = str(first.attrs.get("healpix_ordering", "ring")).lower() == "nested"
        for i, ((label, field), share, cmap) in enumerate(
            zip(panels, shared_scale, cmaps, strict=True)
        ):
            healpix_panel(
                fig,
                (1, n, i + 1),
                np.asarray(field.transpose(VALUES), dtype=float),
                nest=nest,
                title=label,
                vmin=vmin if share else None,
                vmax=vmax if share else None,
                cmap=cmap,
                units=units,
                coastlines=True,
            )
        if title:
            place_suptitle(fig, title, fontsize=11)
        if attribution:
            add_attribution(fig, attribution)
        return fig
    lon = first[LONGITUDE].values
    lat = first[LATITUDE].values
    extent = [lon.min(), lon.max(), lat.min(), lat.max()]
    global_map = (lon.max() - lon.min()) > 300
    proj = ccrs.Robinson() if global_map else ccrs.PlateCarree()
    fig, axes = plt.subplots(
        1,
        n,
        figsize=(4.2 * n, 3.6 if not global_map else 3.0),
        subplot_kw={"projection": proj},
        layout="constrained",
    )
    axes = np.atleast_1d(axes)
    for ax, (label, field), share, cmap in zip(axes, panels, shared_scale, cmaps, strict=True):
        kw = {"vmin": vmin, "vmax": vmax} if share else {}
        mesh = ax.pcolormesh(
            field[LONGITUDE].values,
            field[LATITUDE].values,
            np.asarray(field.transpose(LATITUDE, LONGITUDE)),
            transform=ccrs.PlateCarree(),
            cmap=cmap,
            shading="nearest",
            **kw,
        )
        if global_map:
            ax.set_global()
        else:
            ax.set_extent(extent, crs=ccrs.PlateCarree())
        ax.coastlines(resolution="110m", linewidth=0.7)
        ax.set_title(label, fontsize=10)
        add_round_colorbar(
            fig, mesh, ax, units=units, orientation="horizontal", pad=0.04, fraction=0.05
        )
    if title:
        fig.suptitle(title, fontsize=11)
    if attribution:
        fig.supxlabel(attribution, fontsize=7, color="0.35").set_gid(ATTRIBUTION_GID)
    return fig


def plot_panels(
    panels: list[tuple[str, xr.DataArray]],
    path: str | os.PathLike,
    *,
    title: str = "",
    units: str | None = None,
    shared_scale: list[bool] | None = None,
    cmaps: list[str] | None = None,
    attribution: str | None = None,
) -> Path:
    """Save `panels_figure(panels, ...)` as a PNG at `path` (folders made); returns it.

    The keyword arguments are those of `panels_figure`; `attribution` defaults to the one
    `data_attribution` finds in the first field's attributes (never a fixed credit).
    """
    import matplotlib.pyplot as plt

    fig = panels_figure(
        panels,
        title=title,
        units=units,
        shared_scale=shared_scale,
        cmaps=cmaps,
        attribution=attribution,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_imputation(
    result: xr.Dataset,
    field: xr.DataArray | None,
    variable: str,
    path: str | os.PathLike,
    *,
    time=None,
    engine: str = "",
    attribution: str | None = None,
) -> Path:
    """Map one time step of an imputation: truth, observed cells, posterior mean and std.

    The truth is drawn when the hidden cells have values. The colour bars carry the units of
    `<variable>_mean`; the footer names the data's source, from the attributes of `result` (as
    `climate.impute` and `manifold-aps impute` carry them over from the input), else of `field`.

    Arguments:
        result: the output of `climate.impute` (`<variable>_mean`, `_std`, `observed`).
        field: the input field (the truth where it has values), or None.
        variable: the variable name.
        path: PNG path.
        time: the time step (anything `.sel(time=..., method="nearest")` takes); default the first.
        engine: engine name for the title.
        attribution: the footer; default `data_attribution(result, field)` ("" for none).
    """
    mean, std, observed = result[f"{variable}_mean"], result[f"{variable}_std"], result["observed"]
    if TIME in mean.dims:
        when = mean[TIME].values[0] if time is None else np.datetime64(time)
        pick = {TIME: when}
        mean, std, observed = (a.sel(pick, method="nearest") for a in (mean, std, observed))
        label = str(mean[TIME].values)[:16]
        field = None if field is None else field.sel({TIME: mean[TIME].values})
    else:
        label = ""
    observed = observed.astype(bool)
    panels, shared, cmaps = [], [], []
    if field is not None and bool(field.where(~observed).notnull().any()):
        panels.append(("input (truth)", field))
        shared.append(True)
        cmaps.append("RdYlBu_r")
    frac = float(observed.mean())
    panels += [
        (f"observed ({100 * frac:.0f} % of cells)", mean.where(observed)),
        ("posterior mean", mean),
        ("posterior std", std.where(~observed)),
    ]
    shared += [True, True, False]
    cmaps += ["RdYlBu_r", "RdYlBu_r", "viridis"]
    long_name = mean.attrs.get("long_name", variable).replace(", posterior mean", "")
    return plot_panels(
        panels,
        path,
        title=f"{long_name} {label} - {engine} posterior".strip(),
        units=mean.attrs.get("units", ""),
        shared_scale=shared,
        cmaps=cmaps,
        attribution=data_attribution(result, field) if attribution is None else attribution,
    )
