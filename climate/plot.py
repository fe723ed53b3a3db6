"""Cartopy maps of imputations: truth, observations, posterior mean and spread; coastlines offline."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import xarray as xr

from climate.schema import LATITUDE, LONGITUDE, TIME

__all__ = ["configure_cartopy_offline", "plot_imputation", "plot_panels"]


def configure_cartopy_offline() -> str:
    """Point cartopy at local Natural Earth shapefiles; returns the folder used.

    `$CARTOPY_DATA_DIR` wins when set; otherwise the 1:110m coastlines shipped in the package.
    """
    import cartopy

    folder = os.environ.get("CARTOPY_DATA_DIR") or str(
        resources.files("manifold_aps") / "data" / "natural_earth"
    )
    cartopy.config["pre_existing_data_dir"] = folder
    return folder


def plot_panels(
    panels: list[tuple[str, xr.DataArray]],
    path: str | os.PathLike,
    *,
    title: str = "",
    units: str = "",
    shared_scale: list[bool] | None = None,
    cmaps: list[str] | None = None,
    credit: str = "Contains modified Copernicus Climate Change Service information (ERA5, CC-BY-4.0)",
) -> Path:
    """Save a row of maps, one per `(label, field(latitude, longitude))`, as a PNG.

    Fields with `shared_scale[i]` True share one colour range (e.g. truth, observed, mean);
    the others (e.g. a standard deviation) get their own. NaN cells are left blank.
    """
    import cartopy.crs as ccrs
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configure_cartopy_offline()
    n = len(panels)
    shared_scale = shared_scale or [True] * n
    cmaps = cmaps or ["RdYlBu_r"] * n
    shared = [np.asarray(f) for (_, f), s in zip(panels, shared_scale) if s]
    vmin = float(np.nanmin([np.nanmin(a) for a in shared])) if shared else None
    vmax = float(np.nanmax([np.nanmax(a) for a in shared])) if shared else None
    first = panels[0][1]
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
    for ax, (label, field), share, cmap in zip(axes, panels, shared_scale, cmaps):
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
        fig.colorbar(mesh, ax=ax, orientation="horizontal", pad=0.04, fraction=0.05, label=units)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.supxlabel(credit, fontsize=7, color="0.35")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
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
) -> Path:
    """Map one time step of an imputation: truth (when the hidden cells have values), observed
    cells, posterior mean and posterior standard deviation.

    Arguments:
        result: the output of `climate.impute` (`<variable>_mean`, `_std`, `observed`).
        field: the input field (the truth where it has values), or None.
        variable: the variable name.
        path: PNG path.
        time: the time step (anything `.sel(time=..., method="nearest")` takes); default the first.
        engine: engine name for the title.
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
        panels, path, title=f"{long_name} {label} - {engine} posterior".strip(),
        units=mean.attrs.get("units", ""), shared_scale=shared, cmaps=cmaps,
    )
