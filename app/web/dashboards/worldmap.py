"""The world map of the dashboards: country shapes as SVG paths keyed by ISO 3166-1 alpha-2.

The shapes live in `app/static/dashboards/worldmap.json`, generated once by this module from
the npm package world-atlas 2.0.2 (`countries-50m.json`, Natural Earth 1:50m admin-0
countries as TopoJSON; ISC licence, data in the public domain; see docs/dashboards.md):

    cd /tmp && npm pack world-atlas@2.0.2 && tar xzf world-atlas-2.0.2.tgz
    .venv/bin/python -m app.web.dashboards.worldmap /tmp/package/countries-50m.json

The generator decodes the TopoJSON arcs, projects them with the Equal Earth projection
(equal-area, so shading compares like with like), simplifies each shared arc once
(Douglas-Peucker, so neighbours keep a common border), drops Antarctica and slivers, and
writes compact relative path data. Countries too small to see get a marker at their centre.

At run time the JSON is read once per process (it is static data, like a template) and
`render` draws the shaded map as inline SVG: no script, no network.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path

from markupsafe import Markup, escape

MAP_FILE = Path(__file__).resolve().parents[2] / "static" / "dashboards" / "worldmap.json"

WIDTH = 1000.0
TOLERANCE = 0.3  # map units (1/1000 of the width) for Douglas-Peucker
MIN_RING_AREA = 0.5  # rings smaller than this (map units squared) are dropped ...
SMALL_AREA = 20.0  # ... and countries smaller than this get a marker as well
DROPPED = {"AQ"}  # Antarctica: no jurisdiction, a fifth of the height

SOURCE = ("world-atlas 2.0.2 (npm), countries-50m.json: Natural Earth 1:50m admin-0 countries, "
          "Equal Earth projection, simplified")
LICENCE = ("world-atlas: ISC licence, Copyright 2013-2019 Michael Bostock. Permission to use, copy, "
           "modify, and/or distribute this software for any purpose with or without fee is hereby "
           "granted, provided that the above copyright notice and this permission notice appear in "
           "all copies. Natural Earth data: public domain.")


# --- generation (run once, by hand) ------------------------------------------------------

_A1, _A2, _A3, _A4 = 1.340264, -0.081106, 0.000893, 0.003796
_M = math.sqrt(3) / 2


def equal_earth(lon: float, lat: float) -> tuple[float, float]:
    """Equal Earth projection (Šavrič, Patterson, Jenny 2018) of degrees; y grows north."""
    lam, phi = math.radians(lon), math.radians(lat)
    theta = math.asin(_M * math.sin(phi))
    t2 = theta * theta
    t6 = t2 * t2 * t2
    x = lam * math.cos(theta) / (_M * (_A1 + 3 * _A2 * t2 + t6 * (7 * _A3 + 9 * _A4 * t2)))
    y = theta * (_A1 + _A2 * t2 + t6 * (_A3 + _A4 * t2))
    return x, y


def _douglas_peucker(points: list[tuple[float, float]], tolerance: float) -> list[tuple[float, float]]:
    if len(points) < 3:
        return points
    keep = [False] * len(points)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        first, last = stack.pop()
        (x1, y1), (x2, y2) = points[first], points[last]
        dx, dy = x2 - x1, y2 - y1
        length = math.hypot(dx, dy)
        worst, worst_index = -1.0, -1
        for i in range(first + 1, last):
            px, py = points[i]
            if length == 0:
                dist = math.hypot(px - x1, py - y1)
            else:
                dist = abs(dy * px - dx * py + x2 * y1 - y2 * x1) / length
            if dist > worst:
                worst, worst_index = dist, i
        if worst > tolerance:
            keep[worst_index] = True
            stack.append((first, worst_index))
            stack.append((worst_index, last))
    return [p for p, k in zip(points, keep) if k]


def _clip(points: list[tuple[float, float]], lon: float, *, keep_below: bool) -> list[tuple[float, float]]:
    """Sutherland-Hodgman: the part of a closed ring on one side of a meridian."""
    def inside(p):
        return p[0] <= lon if keep_below else p[0] >= lon

    out: list[tuple[float, float]] = []
    for i, current in enumerate(points):
        previous = points[i - 1]
        if inside(current):
            if not inside(previous):
                out.append(_cut(previous, current, lon))
            out.append(current)
        elif inside(previous):
            out.append(_cut(previous, current, lon))
    return out


def _cut(a: tuple[float, float], b: tuple[float, float], lon: float) -> tuple[float, float]:
    t = (lon - a[0]) / (b[0] - a[0])
    return (lon, a[1] + t * (b[1] - a[1]))


def _ring_area(ring: list[tuple[int, int]]) -> float:
    """Signed area (shoelace) in map units squared; points are in tenths of a unit."""
    total = 0
    for (x1, y1), (x2, y2) in zip(ring, ring[1:] + ring[:1]):
        total += x1 * y2 - x2 * y1
    return total / 200.0


def _ring_centroid(ring: list[tuple[int, int]]) -> tuple[float, float]:
    area6 = 0.0
    cx = cy = 0.0
    for (x1, y1), (x2, y2) in zip(ring, ring[1:] + ring[:1]):
        cross = x1 * y2 - x2 * y1
        area6 += cross
        cx += (x1 + x2) * cross
        cy += (y1 + y2) * cross
    if area6 == 0:
        xs, ys = zip(*ring)
        return sum(xs) / len(xs) / 10, sum(ys) / len(ys) / 10
    return cx / (3 * area6) / 10, cy / (3 * area6) / 10


def _num(tenths: int) -> str:
    text = f"{tenths / 10:.1f}".removesuffix(".0")
    if text.startswith("0."):
        text = text[1:]
    elif text.startswith("-0."):
        text = "-" + text[2:]
    return text


def _join(numbers: list[int]) -> str:
    """SVG number list without needless separators: '-' and a '.' after a decimal need none."""
    out = []
    previous = ""
    for n in numbers:
        piece = _num(n)
        if previous and not (piece.startswith("-") or (piece.startswith(".") and "." in previous)):
            out.append(" ")
        out.append(piece)
        previous = piece
    return "".join(out)


def _path(rings: list[list[tuple[int, int]]]) -> str:
    parts = []
    for ring in rings:
        (x0, y0) = ring[0]
        deltas: list[int] = []
        px, py = x0, y0
        for x, y in ring[1:]:
            deltas += [x - px, y - py]
            px, py = x, y
        parts.append(f"M{_join([x0, y0])}l{_join(deltas)}z")
    return "".join(parts)


def build(topojson_path: str, out_path: Path = MAP_FILE) -> dict:
    import pycountry

    topology = json.loads(Path(topojson_path).read_text())
    (sx, sy), (tx, ty) = topology["transform"]["scale"], topology["transform"]["translate"]
    geometries = topology["objects"]["countries"]["geometries"]

    # Several shapes may carry one code (Australia and the Ashmore and Cartier Islands are
    # both 036): a country's polygons are the union of its shapes'.
    polygons_of: dict[str, list] = {}
    for geometry in geometries:
        numeric = geometry.get("id")
        country = pycountry.countries.get(numeric=numeric) if numeric else None
        if country is None or country.alpha_2 in DROPPED:
            continue
        polygons = geometry["arcs"] if geometry["type"] == "MultiPolygon" else [geometry["arcs"]]
        polygons_of.setdefault(country.alpha_2, []).extend(polygons)

    # Decode every arc to longitude/latitude, then project (y grows north for now).
    lonlat_arcs = []
    for arc in topology["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x += dx
            y += dy
            points.append((x * sx + tx, y * sy + ty))
        lonlat_arcs.append(points)
    projected_arcs = [[equal_earth(lon, lat) for lon, lat in arc] for arc in lonlat_arcs]

    # Bounds of the kept countries only.
    used = set()
    for polygons in polygons_of.values():
        for polygon in polygons:
            for ring in polygon:
                used.update(a if a >= 0 else ~a for a in ring)
    xs = [p[0] for a in used for p in projected_arcs[a]]
    ys = [p[1] for a in used for p in projected_arcs[a]]
    min_x, max_x, min_y, max_y = min(xs), max(xs), min(ys), max(ys)
    scale = WIDTH / (max_x - min_x)
    height = math.ceil((max_y - min_y) * scale)

    def to_map(point):
        return ((point[0] - min_x) * scale, (max_y - point[1]) * scale)

    simplified, raw = {}, {}
    for a in used:
        pts = [to_map(p) for p in projected_arcs[a]]
        raw[a] = [(round(x * 10), round(y * 10)) for x, y in pts]
        simplified[a] = [(round(x * 10), round(y * 10)) for x, y in _douglas_peucker(pts, TOLERANCE)]

    def ring_points(ring_arcs, arcs=simplified):
        points: list[tuple[int, int]] = []
        for a in ring_arcs:
            arc = arcs[a] if a >= 0 else arcs[~a][::-1]
            points.extend(arc if not points else arc[1:])
        deduped = [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]
        if len(deduped) > 1 and deduped[0] == deduped[-1]:
            deduped.pop()
        return deduped

    def crosses_antimeridian(ring_arcs) -> bool:
        return any(abs(b[0] - a[0]) > 180 for i in ring_arcs for a, b in zip(lonlat_arcs[i if i >= 0 else ~i],
                                                                                lonlat_arcs[i if i >= 0 else ~i][1:]))

    def split_at_antimeridian(ring_arcs) -> list[list[tuple[int, int]]]:
        """A ring that crosses 180 degrees (Russia, Fiji) would streak across the map: unwrap
        its longitudes, cut it at the antimeridian into pieces on either edge, and project
        and simplify each piece on its own."""
        points: list[tuple[float, float]] = []
        for i in ring_arcs:
            arc = lonlat_arcs[i] if i >= 0 else lonlat_arcs[~i][::-1]
            points.extend(arc if not points else arc[1:])
        unwrapped = [points[0]]
        for lon, lat in points[1:]:
            previous = unwrapped[-1][0]
            while lon - previous > 180:
                lon -= 360
            while previous - lon > 180:
                lon += 360
            unwrapped.append((lon, lat))
        pieces = []
        for shift in (-360, 0, 360):
            piece = [(lon + shift, lat) for lon, lat in unwrapped]
            piece = _clip(_clip(piece, 180.0, keep_below=True), -180.0, keep_below=False)
            if len(piece) >= 3:
                projected = [to_map(equal_earth(lon, lat)) for lon, lat in piece]
                simple = [(round(x * 10), round(y * 10)) for x, y in _douglas_peucker(projected + projected[:1], TOLERANCE)]
                simple = [p for i, p in enumerate(simple) if i == 0 or p != simple[i - 1]]
                if len(simple) > 1 and simple[0] == simple[-1]:
                    simple.pop()
                if len(simple) >= 3:
                    pieces.append(simple)
        return pieces

    countries: dict[str, dict] = {}
    for code, polygons in sorted(polygons_of.items()):
        rings = []
        for polygon in polygons:
            for ring in polygon:
                if crosses_antimeridian(ring):
                    rings.extend(split_at_antimeridian(ring))
                else:
                    rings.append(ring_points(ring))
        rings = [r for r in rings if len(r) >= 3]
        if not rings:  # an island too small to survive simplification: keep its own outline
            rings = [ring_points(ring, raw) for polygon in polygons for ring in polygon]
            outlines = [r for r in rings if len(r) >= 3]
            if not outlines:  # smaller than a tenth of a unit: a marker only
                points = [p for r in rings for p in r]
                countries[code] = {"d": "", "small": True,
                                   "cx": round(sum(p[0] for p in points) / len(points) / 10, 1),
                                   "cy": round(sum(p[1] for p in points) / len(points) / 10, 1)}
                continue
            rings = [max(outlines, key=lambda r: abs(_ring_area(r)))]
        largest = max(rings, key=lambda r: abs(_ring_area(r)))
        kept = [r for r in rings if r is largest or abs(_ring_area(r)) >= MIN_RING_AREA]
        total = sum(abs(_ring_area(r)) for r in kept)
        cx, cy = _ring_centroid(largest)
        entry = {"d": _path(kept), "cx": round(cx, 1), "cy": round(cy, 1)}
        if total < SMALL_AREA:
            entry["small"] = True
        countries[code] = entry

    data = {"source": SOURCE, "licence": LICENCE, "width": int(WIDTH), "height": height, "countries": countries}
    out_path.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
    return data


# --- run time -----------------------------------------------------------------------------

@lru_cache(maxsize=1)
def load() -> dict:
    return json.loads(MAP_FILE.read_text())


def codes_on_map() -> frozenset[str]:
    return frozenset(load()["countries"])


def shade_breaks(values: Mapping[str, int], classes: int = 5) -> list[int]:
    """Upper bounds of the shading classes: quantiles of the non-zero values, distinct."""
    nonzero = sorted(v for v in values.values() if v > 0)
    if not nonzero:
        return []
    breaks: list[int] = []
    for k in range(1, classes + 1):
        bound = nonzero[min(len(nonzero) - 1, math.ceil(k * len(nonzero) / classes) - 1)]
        if not breaks or bound > breaks[-1]:
            breaks.append(bound)
    return breaks


def shade_class(value: int, breaks: list[int]) -> int:
    """0 for none, else 1..len(breaks)."""
    if value <= 0:
        return 0
    for i, bound in enumerate(breaks, start=1):
        if value <= bound:
            return i
    return len(breaks)


def legend(breaks: list[int]) -> list[tuple[int, str]]:
    """(class, label) pairs: '1-3', '4-10', ..."""
    items = []
    low = 1
    for i, bound in enumerate(breaks, start=1):
        items.append((i, str(bound) if low >= bound else f"{low}-{bound}"))
        low = bound + 1
    return items


def render(values: Mapping[str, int], href: Callable[[str], str], label: Callable[[str, int], str],
           title: str = "Referrals by jurisdiction") -> Markup:
    """The shaded map as inline SVG. Countries with figures are links with a title."""
    data = load()
    breaks = shade_breaks(values)
    out = [
        f'<svg class="worldmap" viewBox="0 0 {data["width"]} {data["height"]}" role="img" '
        f'aria-labelledby="worldmap-title" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="worldmap-title">{escape(title)}</title>',
    ]
    markers = []
    for code, shape in data["countries"].items():
        value = values.get(code, 0)
        text = escape(label(code, value))
        cls = f"country q{shade_class(value, breaks)}"
        if value > 0:
            if shape["d"]:
                out.append(f'<a href="{escape(href(code))}" aria-label="{text}"><path class="{cls}" '
                           f'd="{shape["d"]}"><title>{text}</title></path></a>')
            if shape.get("small"):
                markers.append(
                    f'<a href="{escape(href(code))}" aria-label="{text}"><circle class="marker {cls}" '
                    f'cx="{shape["cx"]}" cy="{shape["cy"]}" r="4"><title>{text}</title></circle></a>'
                )
        elif shape["d"]:
            out.append(f'<path class="{cls}" d="{shape["d"]}"><title>{text}</title></path>')
    out.extend(markers)
    out.append("</svg>")
    return Markup("".join(out))


if __name__ == "__main__":  # pragma: no cover - a generator run by hand
    if len(sys.argv) != 2:
        sys.exit("usage: python -m app.web.dashboards.worldmap path/to/countries-50m.json")
    result = build(sys.argv[1])
    size = MAP_FILE.stat().st_size
    print(f"{len(result['countries'])} countries, {result['width']}x{result['height']}, {size} bytes -> {MAP_FILE}")
