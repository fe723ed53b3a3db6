"""Pictures of signals on domains: meshes (matplotlib 3-D), HEALPix (Mollweide), planar grids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["plot_signals"]


def _ax_mesh(fig, pos, spec, domain, values, vmin, vmax, cmap, title, view):
    import warnings

    import matplotlib

    ax = fig.add_subplot(*spec, projection="3d")
    tri = domain.faces
    with warnings.catch_warnings():  # "Mean of empty slice": a face of unknown vertices only, drawn grey
        warnings.simplefilter("ignore", RuntimeWarning)
        face_vals = np.nanmean(values[tri], axis=1)  # a face takes the mean of its known vertices
    colours = matplotlib.colormaps[cmap].copy()
    colours.set_bad("0.85")
    coll = ax.plot_trisurf(pos[:, 0], pos[:, 1], pos[:, 2], triangles=tri, cmap=colours, linewidth=0,
                           antialiased=False)
    coll.set_array(np.ma.masked_invalid(face_vals))
    coll.set_clim(vmin, vmax)
    ax.view_init(*view)
    ax.set_axis_off()
    ax.set_box_aspect(np.ptp(pos, axis=0), zoom=1.4)
    ax.set_title(title, fontsize=9)
    return coll


def plot_signals(
    domain,
    signals: list[tuple[str, np.ndarray]],
    path: str | os.PathLike,
    *,
    shared_scale: list[bool] | None = None,
    cmap: str = "viridis",
    view: tuple[float, float] = (20, -60),
    suptitle: str = "",
) -> Path:
    """Save a row of panels, one per `(title, values (N,))`, drawn as the domain allows.

    `TriangleMesh`/`IcosphereMesh`: 3-D surface coloured by value; `HealpixSphere`: healpy
    Mollweide projection; `PlanarGrid`/`SphereGrid`: an image. Panels with `shared_scale` True
    share one colour range. NaN values are drawn grey (on meshes: a face takes the mean of its
    vertices that are not NaN, grey when none is).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from manifold_aps.geometry import HealpixSphere, PlanarGrid, SphereGrid

    n = len(signals)
    shared_scale = shared_scale or [True] * n
    shared = [np.asarray(v, float) for (_, v), s in zip(signals, shared_scale) if s]
    lo = float(np.nanmin([np.nanmin(v) for v in shared])) if shared else None
    hi = float(np.nanmax([np.nanmax(v) for v in shared])) if shared else None
    fig = plt.figure(figsize=(3.6 * n, 3.4))
    for i, ((title, values), share) in enumerate(zip(signals, shared_scale)):
        values = np.asarray(values, float).ravel()
        vmin, vmax = (lo, hi) if share else (float(np.nanmin(values)), float(np.nanmax(values)))
        spec = (1, n, i + 1)
        if isinstance(domain, HealpixSphere):
            import healpy as hp

            m = values if not domain.nest else hp.reorder(values, n2r=True)
            hp.mollview(np.where(np.isnan(m), hp.UNSEEN, m), fig=fig.number, sub=spec, title=title, min=vmin, max=vmax,
                        cmap=cmap, cbar=True, notext=True, hold=False)
        elif isinstance(domain, (PlanarGrid, SphereGrid)):
            ax = fig.add_subplot(*spec)
            im = ax.imshow(values.reshape(domain.shape), cmap=cmap, vmin=vmin, vmax=vmax, origin="upper")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        elif hasattr(domain, "faces"):
            coll = _ax_mesh(fig, domain.positions.numpy(), spec, domain, values, vmin, vmax, cmap, title, view)
            fig.colorbar(coll, ax=fig.axes[-1], fraction=0.03, pad=0.0, shrink=0.7)
        else:
            ax = fig.add_subplot(*spec)
            pos = domain.positions.numpy()
            sc = ax.scatter(pos[:, 0], pos[:, 1], c=values, s=4, cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
            fig.colorbar(sc, ax=ax, fraction=0.046)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
