"""Seeded random mask generators on any domain: fractions, caps, boxes, stations, swaths.

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
    "directions",
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
        n = self.domain.num_nodes
        n_missing = min(int(round(frac * n)), n - 1)
        mask = torch.ones(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=rng)[:n_missing]] = False
        return mask


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
        x, y, z = self._dirs.T
        self._lat = torch.rad2deg(torch.asin(z.clamp(-1, 1)))
        self._lon = torch.rad2deg(torch.atan2(y, x))

    def _one(self, rng):
        mask = torch.ones(self.domain.num_nodes, dtype=torch.bool)
        for centre in self._area_weighted_nodes(self.num_boxes, rng).tolist():
            h_lat = self._uniform(*self.half_width_deg, rng)
            h_lon = self._uniform(*self.half_width_deg, rng)
            dlon = (self._lon - self._lon[centre] + 180.0) % 360.0 - 180.0
            inside = ((self._lat - self._lat[centre]).abs() <= h_lat) & (dlon.abs() <= h_lon)
            mask[inside] = False
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
    a great circle is below the half-width; the circles' poles are uniform on the sphere.

    Arguments:
        domain: the domain.
        num_swaths: swaths per mask (an int or a range of ints).
        half_width_deg: angular half-width of each swath in degrees (a number or a range).
    """

    def __init__(self, domain, num_swaths=(1, 4), half_width_deg=(5.0, 15.0), *, rng=None):
        super().__init__(domain, rng=rng)
        lo, hi = (num_swaths,) * 2 if np.isscalar(num_swaths) else num_swaths
        if not 1 <= lo <= hi:
            raise ValueError(f"num_swaths must be >= 1, got {num_swaths!r}")
        wlo, whi = (half_width_deg,) * 2 if np.isscalar(half_width_deg) else half_width_deg
        if not 0 < wlo <= whi <= 90:
            raise ValueError(f"half_width_deg must lie in (0, 90], got {half_width_deg!r}")
        self.num_swaths, self.half_width_deg = (int(lo), int(hi)), (float(wlo), float(whi))

    def _one(self, rng):
        k = int(torch.randint(self.num_swaths[0], self.num_swaths[1] + 1, (), generator=rng))
        mask = torch.zeros(self.domain.num_nodes, dtype=torch.bool)
        for _ in range(k):
            pole = torch.randn(3, generator=rng, dtype=torch.float64)
            pole = pole / pole.norm()
            half = math.radians(self._uniform(*self.half_width_deg, rng))
            mask |= (self._dirs @ pole).abs() <= math.sin(half)
        return mask


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
