"""Pictures of signals on domains: meshes (matplotlib 3-D), HEALPix (Mollweide), planar grids.

Every figure made here has colour bars with ticks at round numbers and the field's units as
their label, a figure title kept clear of the panel titles, and, when given, a footer naming the
source of the data shown. HEALPix maps of Earth fields (`coastlines=True`) carry the Natural
Earth 1:110m coastlines shipped in the package, read with no network.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "add_attribution",
    "add_round_colorbar",
    "coastline_lines",
    "healpix_panel",
    "natural_earth_dir",
    "place_suptitle",
    "plot_signals",
    "signals_figure",
]

MISSING_GREY = "0.85"  # NaN pixels, cells and faces
COASTLINE_GID = "coastline"  # the gid of every coastline line, to find them in a figure
ATTRIBUTION_GID = "attribution"  # the gid of the footer text
_COASTLINE_SHP = Path("shapefiles", "natural_earth", "physical", "ne_110m_coastline.shp")


def natural_earth_dir() -> str:
    """The folder of Natural Earth shapefiles in cartopy's layout.

    `$CARTOPY_DATA_DIR` wins when set; otherwise the 1:110m coastlines and land shipped in the
    package (`manifold_aps/data/natural_earth`).
    """
    return os.environ.get("CARTOPY_DATA_DIR") or str(
        resources.files("manifold_aps") / "data" / "natural_earth"
    )


@functools.lru_cache(maxsize=4)
def _read_coastlines(shp: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    from cartopy.io.shapereader import Reader

    lines = []
    for geometry in Reader(shp).geometries():
        for line in getattr(geometry, "geoms", [geometry]):  # LineString or MultiLineString
            lon_deg, lat_deg = np.asarray(line.coords, dtype=float).T
            lines.append((lon_deg, lat_deg))
    return tuple(lines)


def coastline_lines() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The Natural Earth 1:110m coastlines as polylines `(lon_deg (K,), lat_deg (K,))`.

    Read once from `natural_earth_dir()`; longitudes in -180..180 degrees.

    Raises:
        FileNotFoundError: the folder has no `ne_110m_coastline.shp`.
    """
    shp = Path(natural_earth_dir()) / _COASTLINE_SHP
    if not shp.is_file():
        raise FileNotFoundError(
            f"no Natural Earth coastlines at {shp}; unset $CARTOPY_DATA_DIR to use the shipped ones"
        )
    return _read_coastlines(str(shp))


def add_round_colorbar(fig, mappable, ax, *, units: str = "", **kwargs):
    """A colour bar beside `ax` with ticks at round numbers and `units` as its label.

    Three to six ticks at multiples of 1, 2 or 5 times a power of ten (`MaxNLocator`), written
    without an offset (`275`, not `217.614` or `+2.7e2`).

    Arguments:
        fig: the matplotlib figure.
        mappable: what the bar describes (an image, a collection, a `ScalarMappable`).
        ax: the axes it takes its room from.
        units: the label, e.g. `"K"`; empty for none.
        **kwargs: passed to `Figure.colorbar` (orientation, shrink, pad, fraction, ...).

    Returns:
        the `Colorbar`.
    """
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    bar = fig.colorbar(mappable, ax=ax, **kwargs)
    bar.locator = MaxNLocator(nbins=5, steps=[1, 2, 5, 10], min_n_ticks=3)
    bar.formatter = ScalarFormatter(useOffset=False)
    bar.update_ticks()
    bar.ax.tick_params(labelsize=8)
    if units:
        bar.set_label(units, fontsize=8)
    return bar


def healpix_panel(
    fig,
    sub: tuple[int, int, int],
    values: np.ndarray,
    *,
    nest: bool = False,
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    units: str = "",
    coastlines: bool = False,
):
    """One Mollweide panel of a HEALPix map (healpy) with a round-ticked colour bar below.

    Arguments:
        fig: the matplotlib figure.
        sub: `(rows, columns, index)` of the panel, as healpy's `sub`.
        values: the map, shape `(N,)`, RING order unless `nest`; NaN drawn grey.
        nest: `values` are in NESTED order.
        title: the panel title.
        vmin: lower end of the colour range (default the map's minimum).
        vmax: upper end of the colour range (default the map's maximum).
        cmap: matplotlib colour map name.
        units: the colour bar's label.
        coastlines: the map is an Earth field (theta colatitude, phi east longitude): drawn with
            east to the right (healpy `flip="geo"`) and the Natural Earth coastlines on top. Sky
            maps (e.g. WMAP) keep the astronomical convention and no coastlines.

    Returns:
        `(axes, colorbar)`.
    """
    import healpy as hp
    import matplotlib
    from matplotlib.cm import ScalarMappable

    values = np.asarray(values, dtype=float).ravel()
    ring = hp.reorder(values, n2r=True) if nest else values
    hp.mollview(
        np.where(np.isnan(ring), hp.UNSEEN, ring),
        fig=fig.number,
        sub=sub,
        title="",
        min=vmin,
        max=vmax,
        cmap=cmap,
        cbar=False,
        notext=True,
        hold=False,
        flip="geo" if coastlines else "astro",
        badcolor=MISSING_GREY,
    )
    ax = fig.axes[-1]
    ax.set_title(title, fontsize=9)
    if coastlines:
        for lon_deg, lat_deg in coastline_lines():
            ax.projplot(lon_deg, lat_deg, lonlat=True, color="k", lw=0.5, gid=COASTLINE_GID)
    norm = ax.get_images()[0].norm
    mappable = ScalarMappable(
        norm=matplotlib.colors.Normalize(vmin=norm.vmin, vmax=norm.vmax), cmap=cmap
    )
    bar = add_round_colorbar(
        fig, mappable, ax, units=units, orientation="horizontal", shrink=0.6, pad=0.05
    )
    return ax, bar


def _axes_extent_px(fig):
    """`(bottom, top)` in display pixels of everything the figure's axes draw, titles included."""
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.get_visible()]
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return fig.bbox.y0, fig.bbox.y1
    return min(b.y0 for b in boxes), max(b.y1 for b in boxes)


def place_suptitle(fig, text: str, *, fontsize: float = 10, pad_pt: float = 4.0):
    """Set the figure title just above every axes and panel title, so that none overlaps.

    For figures whose axes no layout engine manages (healpy's Mollweide axes, 3-D renders):
    the figure is drawn once, and the title's baseline goes `pad_pt` points above the highest
    drawn extent; `savefig(bbox_inches="tight")` keeps it in the picture.

    Returns:
        the title's `Text`.
    """
    fig.canvas.draw()
    _, top = _axes_extent_px(fig)
    y = fig.transFigure.inverted().transform((0.0, top + pad_pt * fig.dpi / 72.0))[1]
    return fig.suptitle(text, fontsize=fontsize, y=y, va="bottom")


def add_attribution(fig, text: str, *, fontsize: float = 7, pad_pt: float = 4.0):
    """A small grey footer under every axes naming the source of the data shown.

    Arguments:
        fig: the matplotlib figure (drawn once here to find the bottom of its axes).
        text: the attribution, e.g. the licence line of the data file.
        fontsize: points.
        pad_pt: gap under the lowest axes or colour bar, points.

    Returns:
        the footer's `Text` (gid `"attribution"`).
    """
    fig.canvas.draw()
    bottom, _ = _axes_extent_px(fig)
    y = fig.transFigure.inverted().transform((0.0, bottom - pad_pt * fig.dpi / 72.0))[1]
    return fig.text(
        0.5, y, text, ha="center", va="top", fontsize=fontsize, color="0.35", gid=ATTRIBUTION_GID
    )


def _ax_mesh(fig, pos, spec, domain, values, vmin, vmax, cmap, title, view):
    import warnings

    import matplotlib

    ax = fig.add_subplot(*spec, projection="3d")
    tri = domain.faces
    # "Mean of empty slice": a face of unknown vertices only, drawn grey
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        face_vals = np.nanmean(values[tri], axis=1)  # a face takes the mean of its known vertices
    colours = matplotlib.colormaps[cmap].with_extremes(bad=MISSING_GREY)
    coll = ax.plot_trisurf(
        pos[:, 0], pos[:, 1], pos[:, 2], triangles=tri, cmap=colours, linewidth=0, antialiased=False
    )
    coll.set_array(np.ma.masked_invalid(face_vals))
    coll.set_clim(vmin, vmax)
    ax.view_init(*view)
    ax.set_axis_off()
    ax.set_box_aspect(np.ptp(pos, axis=0), zoom=1.4)
    ax.set_title(title, fontsize=9)
    return ax, coll


def signals_figure(
    domain,
    signals: list[tuple[str, np.ndarray]],
    *,
    shared_scale: list[bool] | None = None,
    cmap: str = "viridis",
    view: tuple[float, float] = (20, -60),
    suptitle: str = "",
    units: str = "",
    coastlines: bool = False,
    attribution: str = "",
):
    """A row of panels, one per `(title, values (N,))`, drawn as the domain allows.

    `TriangleMesh`/`IcosphereMesh`: 3-D surface coloured by value; `HealpixSphere`: healpy
    Mollweide projection; `PlanarGrid`/`SphereGrid`: an image. Panels with `shared_scale` True
    share one colour range. NaN values are drawn grey (on meshes: a face takes the mean of its
    vertices that are not NaN, grey when none is).

    Arguments:
        domain: the domain the signals live on.
        signals: `(panel title, values (N,))` pairs.
        shared_scale: per panel, whether it shares the common colour range (default all).
        cmap: matplotlib colour map name.
        view: 3-D camera `(elevation, azimuth)` in degrees, for meshes.
        suptitle: the figure title, set above the panel titles.
        units: the colour bars' label (e.g. `"K"`), the units of every panel.
        coastlines: the signals are Earth fields on a `HealpixSphere`: draw coastlines, east to
            the right (see `healpix_panel`). Leave False for sky maps and other domains.
        attribution: a footer naming the source of the data shown (e.g. its licence line);
            empty for none.

    Returns:
        the matplotlib `Figure` (close it with `matplotlib.pyplot.close`).

    Raises:
        ValueError: `coastlines` on a domain that is not a `HealpixSphere`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from manifold_aps.geometry import HealpixSphere, PlanarGrid, SphereGrid

    if coastlines and not isinstance(domain, HealpixSphere):
        raise ValueError(
            f"coastlines=True needs a HealpixSphere domain, got {type(domain).__name__} "
            "(climate.plot_panels maps latitude-longitude grids with coastlines)"
        )
    n = len(signals)
    shared_scale = shared_scale or [True] * n
    shared = [np.asarray(v, float) for (_, v), s in zip(signals, shared_scale, strict=True) if s]
    lo = float(np.nanmin([np.nanmin(v) for v in shared])) if shared else None
    hi = float(np.nanmax([np.nanmax(v) for v in shared])) if shared else None
    fig = plt.figure(figsize=(3.6 * n, 3.4))
    for i, ((title, values), share) in enumerate(zip(signals, shared_scale, strict=True)):
        values = np.asarray(values, float).ravel()
        vmin, vmax = (lo, hi) if share else (float(np.nanmin(values)), float(np.nanmax(values)))
        spec = (1, n, i + 1)
        if isinstance(domain, HealpixSphere):
            healpix_panel(
                fig,
                spec,
                values,
                nest=domain.nest,
                title=title,
                vmin=vmin,
                vmax=vmax,
                cmap=cmap,
                units=units,
                coastlines=coastlines,
            )
        elif isinstance(domain, (PlanarGrid, SphereGrid)):
            ax = fig.add_subplot(*spec)
            im = ax.imshow(
                values.reshape(domain.shape), cmap=cmap, vmin=vmin, vmax=vmax, origin="upper"
            )
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
            add_round_colorbar(fig, im, ax, units=units, fraction=0.046, pad=0.03)
        elif hasattr(domain, "faces"):
            ax, coll = _ax_mesh(
                fig, domain.positions.numpy(), spec, domain, values, vmin, vmax, cmap, title, view
            )
            add_round_colorbar(fig, coll, ax, units=units, fraction=0.03, pad=0.0, shrink=0.7)
        else:
            ax = fig.add_subplot(*spec)
            pos = domain.positions.numpy()
            sc = ax.scatter(pos[:, 0], pos[:, 1], c=values, s=4, cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
            add_round_colorbar(fig, sc, ax, units=units, fraction=0.046)
    if suptitle:
        place_suptitle(fig, suptitle)
    if attribution:
        add_attribution(fig, attribution)
    return fig


def plot_signals(
    domain,
    signals: list[tuple[str, np.ndarray]],
    path: str | os.PathLike,
    *,
    shared_scale: list[bool] | None = None,
    cmap: str = "viridis",
    view: tuple[float, float] = (20, -60),
    suptitle: str = "",
    units: str = "",
    coastlines: bool = False,
    attribution: str = "",
) -> Path:
    """Save `signals_figure(domain, signals, ...)` as a PNG at `path` (folders made); returns it.

    The keyword arguments are those of `signals_figure`: `units` labels the colour bars,
    `coastlines=True` marks HEALPix Earth fields (coastlines drawn, east to the right), and
    `attribution` is the footer naming the source of the data shown.
    """
    import matplotlib.pyplot as plt

    fig = signals_figure(
        domain,
        signals,
        shared_scale=shared_scale,
        cmap=cmap,
        view=view,
        suptitle=suptitle,
        units=units,
        coastlines=coastlines,
        attribution=attribution,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
