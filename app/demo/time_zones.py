"""A country's time zone for its agencies' desks, from the tz database's zone.tab: the table the
database keeps for people choosing a zone, one country a row, in the data zoneinfo reads (the
system's, else the tzdata package)."""

from __future__ import annotations

import functools
import importlib.resources
import os
import zoneinfo

# zone.tab lists a country's zones region by region; for most countries the first is the
# capital's, for these it is an outlying region's (an island, an exclave, the far east or west).
CAPITALS = {
    "AU": "Australia/Sydney", "BR": "America/Sao_Paulo", "CA": "America/Toronto", "FM": "Pacific/Pohnpei",
    "PS": "Asia/Hebron", "RU": "Europe/Moscow", "UA": "Europe/Kyiv", "UZ": "Asia/Tashkent",
}


def time_zone(country: str) -> str:
    """The IANA zone of the country's capital."""
    return CAPITALS.get(country) or country_zones()[country][0]


@functools.cache
def country_zones() -> dict[str, list[str]]:
    """ISO 3166 code -> the country's zones, in zone.tab's order."""
    zones: dict[str, list[str]] = {}
    for line in _zone_table().splitlines():
        if line and not line.startswith("#"):
            country, _coordinates, zone, *_comment = line.split("\t")
            zones.setdefault(country, []).append(zone)
    return zones


def _zone_table() -> str:
    # Where zoneinfo looks, in its order.
    for directory in zoneinfo.TZPATH:
        path = os.path.join(directory, "zone.tab")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as table:
                return table.read()
    return importlib.resources.files("tzdata").joinpath("zoneinfo", "zone.tab").read_text(encoding="utf-8")
