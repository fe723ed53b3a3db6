"""Observation masks on any domain: the regions they hide, and seeded random generators of them.

The regions (pure functions, True = observed or inside): `random_observed` (a fraction hidden at
random), `lat_lon_box` (a latitude-longitude box), `great_circle_bands` (satellite swaths about
great circles, with `pole_through` for a circle through a point at a heading). They are the one
implementation of these shapes: the training generators below draw their parameters and call
them, and `climate.masks` wraps them as xarray masks on a user's grid.

Every generator has `param_keys = ("mask",)`, the keyword of `Mask.update`, and
`step(batch_size, seed=None) -> {"mask": bool tensor (B, N, 1)}` with True = observed. A seed may
be an int or a string (hashed); without a seed the generator's own `torch.Generator` advances.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from manifold_aps.geometry import Domain, SphericalDomain

__all__ = [
    "BoxMaskGenerator",
    "CapMaskGenerator",
    "MaskGenerator",
    "MixtureMaskGenerator",
    "RandomMaskGenerator",
    "StationMaskGenerator",
    "SwathMaskGenerator",
    "angular_radius",
    "directions",
    "great_circle_bands",
    "lat_lon_box",
    "pole_through",
    "random_observed",
]


def seed_to_int(seed: int | str) -> int:
    """An integer seed; strings are hashed (sha256) so that names make reproducible seeds."""
    if isinstance(seed, str):
        return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little")
    if isinstance(seed, (int, np.integer)):
        return int(seed)
    raise TypeError(f"seed must be an int or a str, got {type(seed).__name__}")


def directions(domain: Domain) -> torch.Tensor:
    """Unit vectors `(N, 3)` from the domain's area centroid (the positions on a sphere)."""
    pos = domain.positions
    if not isinstance(domain, SphericalDomain):
        pos = pos - (domain.mass[:, None] * pos).sum(0) / domain.mass.sum()
    return pos / pos.norm(dim=1, keepdim=True).clamp_min(1e-300)


def random_observed(permutation: torch.Tensor, missing: float) -> torch.Tensor:
    """Observed flags `(N,)`: the first `round(missing * N)` nodes of `permutation` hidden.

    At most `N - 1` are hidden, so one node stays observed. The caller draws the permutation, so
    each keeps its own random stream (`torch.randperm` in training, numpy in `climate.masks`).

    Arguments:
        permutation: a permutation of `0..N-1`, integer tensor `(N,)`.
        missing: fraction hidden, in [0, 1].
    """
    n = permutation.numel()
    hidden = min(int(round(missing * n)), n - 1)
    observed = torch.ones(n, dtype=torch.bool)
    observed[permutation[:hidden]] = False
    return observed


def _pair(value, name: str) -> tuple[float, float]:
    """Two finite numbers from a `(a, b)` sequence."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers (degrees), got {value!r}") from None
    if not (np.isfinite(a) and np.isfinite(b)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return a, b


def lat_lon_box(lat_deg, lon_deg, lat, lon) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which latitudes and longitudes lie in a box `(south, north)` x `(west, east)`, edges in.

    Longitudes are compared modulo 360, so `lon=(-10, 2)` and `(350, 2)` are the same box on any
    grid convention; a box runs eastwards from `west` to `east` (west > east crosses 0/360 or the
    dateline) and `east - west >= 360` holds every longitude. Elementwise: give the rows and
    columns of a grid, or the latitude and longitude of every node.

    Arguments:
        lat_deg: latitudes in degrees, any shape.
        lon_deg: longitudes in degrees, any shape.
        lat: `(south, north)` in degrees, -90 <= south <= north <= 90.
        lon: `(west, east)` in degrees, each within [-360, 360].

    Returns:
        `(in_lat, in_lon, offset)`: boolean arrays of `lat_deg`'s and `lon_deg`'s shapes, and each
        longitude's distance eastwards from `west` in degrees, in [0, 360).

    Raises:
        ValueError: the box is not two pairs of finite numbers in those ranges.
    """
    south, north = _pair(lat, "lat")
    if not -90 <= south <= north <= 90:
        raise ValueError(
            f"lat must be (south, north) with -90 <= south <= north <= 90, got {lat!r}"
        )
    west, east = _pair(lon, "lon")
    if abs(west) > 360 or abs(east) > 360:
        raise ValueError(f"lon must be (west, east) in degrees within [-360, 360], got {lon!r}")
    lat_deg, lon_deg = np.asarray(lat_deg, dtype=np.float64), np.asarray(lon_deg, dtype=np.float64)
    eps = 1e-9
    in_lat = (lat_deg >= south - eps) & (lat_deg <= north + eps)
    w, e = np.mod(west, 360.0), np.mod(east, 360.0)
    offset = np.mod(np.mod(lon_deg, 360.0) - w + eps, 360.0)  # eastwards from the west edge
    if east - west >= 360:
        in_lon = np.ones(lon_deg.shape, dtype=bool)
    else:
        in_lon = offset <= np.mod(e - w, 360.0) + 2 * eps
    return in_lat, in_lon, offset


def pole_through(point: torch.Tensor, heading: float) -> torch.Tensor:
    """The pole `(3,)` of the great circle through a unit vector `point` at `heading` (radians).

    The heading is measured from local north towards east; the pole is a unit vector when `point`
    is one and off the geographic poles.
    """
    lam = torch.atan2(point[1], point[0])
    east = torch.stack([-torch.sin(lam), torch.cos(lam), torch.zeros_like(lam)])
    north = torch.linalg.cross(point, east)
    return torch.linalg.cross(point, math.cos(heading) * north + math.sin(heading) * east)


def great_circle_bands(dirs: torch.Tensor, poles: torch.Tensor, half_width) -> torch.Tensor:
    """Nodes within angular half-widths of great circles: bool `(N,)`, True inside any band.

    A node is inside the band of pole `p` when the angle between its direction and the circle's
    plane is at most the half-width: `|d . p| <= sin(half_width)` (1e-12 slack at the edge).

    Arguments:
        dirs: unit vectors of the nodes `(N, 3)` (`directions(domain)`).
        poles: unit poles of the great circles `(K, 3)`.
        half_width: half-widths in radians, a number or one per circle `(K,)`, in [0, pi/2].
    """
    poles = torch.as_tensor(poles, dtype=dirs.dtype).reshape(-1, 3)
    sin_half = torch.sin(torch.as_tensor(half_width, dtype=dirs.dtype)).expand(poles.shape[0])
    inside = torch.zeros(dirs.shape[0], dtype=torch.bool)
    for pole, limit in zip(poles, sin_half, strict=True):
        inside |= (dirs @ pole).abs() <= limit + 1e-12
    return inside


def _range(value, name: str) -> tuple[float, float]:
    lo, hi = (value, value) if np.isscalar(value) else tuple(value)
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"{name} must be a fraction in [0, 1] or a range (lo, hi), got {value!r}")
    return float(lo), float(hi)


class MaskGenerator:
    """Base class: subclasses implement `_one(rng) -> bool tensor (N,)` (True = observed).

    Arguments:
        domain: the domain.
        rng: the generator used when `step` gets no seed (default: seeded with 0).
    """

    param_keys = ("mask",)

    def __init__(self, domain: Domain, *, rng: torch.Generator | None = None):
        self.domain = domain
        self.rng = rng if rng is not None else torch.Generator().manual_seed(0)
        self._mass = domain.mass
        self._dirs = directions(domain)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.domain!r})"

    def step(self, batch_size: int = 1, seed: int | str | None = None) -> dict[str, torch.Tensor]:
        """Draw `batch_size` masks; returns `{"mask": (B, N, 1) bool}`, each observing something."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = self.rng if seed is None else torch.Generator().manual_seed(seed_to_int(seed))
        masks = []
        for _ in range(batch_size):
            for _attempt in range(100):
                m = self._one(rng)
                if m.any():
                    break
            else:
                raise RuntimeError(f"{self!r} drew 100 masks that observe nothing")
            masks.append(m)
        return {"mask": torch.stack(masks)[:, :, None]}

    def _one(self, rng: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _area_weighted_nodes(self, k: int, rng: torch.Generator) -> torch.Tensor:
        """`k` distinct nodes drawn with probability proportional to their area."""
        return torch.multinomial(self._mass, k, replacement=False, generator=rng)

    def _uniform(self, lo: float, hi: float, rng: torch.Generator) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=rng, dtype=torch.float64))


class RandomMaskGenerator(MaskGenerator):
    """Each node is missing independently; the missing fraction is drawn uniformly in a range.

    Arguments:
        domain: the domain.
        missing: fraction of nodes hidden, a number or a range `(lo, hi)` in [0, 1].
    """

    def __init__(self, domain, missing=(0.5, 0.95), *, rng=None):
        super().__init__(domain, rng=rng)
        self.missing = _range(missing, "missing")

    def _one(self, rng):
        frac = self._uniform(*self.missing, rng)
        return random_observed(torch.randperm(self.domain.num_nodes, generator=rng), frac)


class CapMaskGenerator(MaskGenerator):
    """Geodesic caps hidden around random centres (area-uniform); each hides `cap_area` of the area.

    The radius of a cap is the geodesic distance that encloses the requested fraction of the
    total area (great circles on spheres, shortest edge paths on meshes).

    Arguments:
        domain: the domain.
        num_caps: number of caps per mask.
        cap_area: area fraction of each cap, a number or range in [0, 1].
    """

    def __init__(self, domain, num_caps: int = 1, cap_area=(0.05, 0.3), *, rng=None):
        super().__init__(domain, rng=rng)
        if num_caps < 1:
            raise ValueError(f"num_caps must be >= 1, got {num_caps}")
        self.num_caps = int(num_caps)
        self.cap_area = _range(cap_area, "cap_area")

    def _one(self, rng):
        mass = self._mass.numpy()
        mask = torch.ones(self.domain.num_nodes, dtype=torch.bool)
        for centre in self._area_weighted_nodes(self.num_caps, rng).tolist():
            dist = self.domain.geodesic_distance(centre)
            order = np.argsort(dist, kind="stable")
            inside = np.cumsum(mass[order]) <= self._uniform(*self.cap_area, rng) * mass.sum()
            mask[torch.from_numpy(order[inside])] = False
        return mask


class BoxMaskGenerator(MaskGenerator):
    """Latitude-longitude boxes hidden (off the sphere: of the directions from the centroid).

    Arguments:
        domain: the domain.
        num_boxes: boxes per mask.
        half_width_deg: half the box size in latitude and longitude (degrees), a number or range.
    """

    def __init__(self, domain, num_boxes: int = 1, half_width_deg=(10.0, 30.0), *, rng=None):
        super().__init__(domain, rng=rng)
        if num_boxes < 1:
            raise ValueError(f"num_boxes must be >= 1, got {num_boxes}")
        lo, hi = (half_width_deg,) * 2 if np.isscalar(half_width_deg) else half_width_deg
        if not 0 < lo <= hi <= 180:
            raise ValueError(f"half_width_deg must lie in (0, 180], got {half_width_deg!r}")
        self.num_boxes, self.half_width_deg = int(num_boxes), (float(lo), float(hi))
        x, y, z = self._dirs.T.numpy()
        self._lat = np.rad2deg(np.arcsin(np.clip(z, -1, 1)))
        self._lon = np.rad2deg(np.arctan2(y, x))

    def _one(self, rng):
        mask = torch.ones(self.domain.num_nodes, dtype=torch.bool)
        for centre in self._area_weighted_nodes(self.num_boxes, rng).tolist():
            h_lat = self._uniform(*self.half_width_deg, rng)
            h_lon = self._uniform(*self.half_width_deg, rng)
            c_lat, c_lon = self._lat[centre], self._lon[centre]
            in_lat, in_lon, _ = lat_lon_box(
                self._lat,
                self._lon,
                (max(c_lat - h_lat, -90.0), min(c_lat + h_lat, 90.0)),
                (c_lon - h_lon, c_lon + h_lon),
            )
            mask[torch.from_numpy(in_lat & in_lon)] = False
        return mask


class StationMaskGenerator(MaskGenerator):
    """A station network: `num_stations` nodes observed (area-uniform), everything else missing.

    Arguments:
        domain: the domain.
        num_stations: number of observed nodes, an int or a range `(lo, hi)` of ints.
    """

    def __init__(self, domain, num_stations=100, *, rng=None):
        super().__init__(domain, rng=rng)
        lo, hi = (num_stations,) * 2 if np.isscalar(num_stations) else num_stations
        if not 1 <= lo <= hi <= domain.num_nodes:
            raise ValueError(
                f"num_stations must lie in 1..{domain.num_nodes}, got {num_stations!r}"
            )
        self.num_stations = (int(lo), int(hi))

    def _one(self, rng):
        lo, hi = self.num_stations
        k = int(torch.randint(lo, hi + 1, (), generator=rng))
        mask = torch.zeros(self.domain.num_nodes, dtype=torch.bool)
        mask[self._area_weighted_nodes(k, rng)] = True
        return mask


class SwathMaskGenerator(MaskGenerator):
    """Satellite swaths: bands of half-width `half_width_deg` around random great circles observed.

    A node is observed when the angle between its direction (from the centroid) and the plane of
    a great circle is below the half-width; the circles' poles are uniform on the sphere, or with
    `through_domain` each circle passes through a node drawn by area, with a uniform heading (the
    same law on the whole sphere; on a regional grid every swath then crosses the domain instead
    of most missing it).

    Arguments:
        domain: the domain.
        num_swaths: swaths per mask (an int or a range of ints).
        half_width_deg: angular half-width of each swath in degrees (a number or a range).
        through_domain: draw each circle through a node of the domain.
    """

    def __init__(
        self,
        domain,
        num_swaths=(1, 4),
        half_width_deg=(5.0, 15.0),
        *,
        through_domain: bool = False,
        rng=None,
    ):
        super().__init__(domain, rng=rng)
        lo, hi = (num_swaths,) * 2 if np.isscalar(num_swaths) else num_swaths
        if not 1 <= lo <= hi:
            raise ValueError(f"num_swaths must be >= 1, got {num_swaths!r}")
        wlo, whi = (half_width_deg,) * 2 if np.isscalar(half_width_deg) else half_width_deg
        if not 0 < wlo <= whi <= 90:
            raise ValueError(f"half_width_deg must lie in (0, 90], got {half_width_deg!r}")
        self.num_swaths, self.half_width_deg = (int(lo), int(hi)), (float(wlo), float(whi))
        self.through_domain = bool(through_domain)

    def _one(self, rng):
        k = int(torch.randint(self.num_swaths[0], self.num_swaths[1] + 1, (), generator=rng))
        poles, halves = [], []
        for _ in range(k):
            if self.through_domain:
                node = self._dirs[self._area_weighted_nodes(1, rng)[0]].to(torch.float64)
                pole = pole_through(node, self._uniform(0.0, 2 * math.pi, rng))
            else:
                pole = torch.randn(3, generator=rng, dtype=torch.float64)
            poles.append(pole / pole.norm())
            halves.append(math.radians(self._uniform(*self.half_width_deg, rng)))
        return great_circle_bands(self._dirs, torch.stack(poles), halves)


def angular_radius(domain: Domain) -> float:
    """Largest angle [deg] between a node's direction (`directions`) and their mean direction.

    180 or near it on a closed surface or the whole sphere; the half-extent of a regional grid
    (about 5.4 for the ERA5 UK box).
    """
    dirs = directions(domain).to(torch.float64)
    mean = (domain.mass[:, None].to(torch.float64) * dirs).sum(0)
    if float(mean.norm()) < 1e-9:
        return 180.0
    cos = (dirs @ (mean / mean.norm())).clamp(-1.0, 1.0)
    return math.degrees(float(torch.arccos(cos.min())))


class MixtureMaskGenerator(MaskGenerator):
    """Draws each mask from one of several generators, chosen with given probabilities.

    Arguments:
        generators: generators on the same domain.
        weights: probabilities (normalised), default uniform.
    """

    def __init__(self, generators, weights=None, *, rng=None):
        generators = list(generators)
        if not generators:
            raise ValueError("generators must not be empty")
        super().__init__(generators[0].domain, rng=rng)
        if any(g.domain is not self.domain for g in generators):
            raise ValueError("all generators of a mixture must share one domain")
        w = (
            torch.ones(len(generators))
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float)
        )
        if w.shape != (len(generators),) or torch.any(w < 0) or w.sum() <= 0:
            raise ValueError(
                f"weights must be {len(generators)} non-negative numbers, got {weights!r}"
            )
        self.generators, self.weights = generators, w / w.sum()

    def _one(self, rng):
        i = int(torch.multinomial(self.weights, 1, generator=rng))
        return self.generators[i]._one(rng)
