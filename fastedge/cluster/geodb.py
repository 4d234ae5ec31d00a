"""The cluster's GeoIP database: a small MaxMind DB of the GeoIP2-City
shape, written with ``mmdb-writer`` (the ``cluster`` extra), which the
nodes' ``geo`` child reads like any GeoLite2 file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .plan import CITIES, City

__all__ = ["GeoDatabaseUnavailable", "write_geo_db"]


class GeoDatabaseUnavailable(RuntimeError):
    """``mmdb-writer`` is not installed."""


def write_geo_db(path: str, networks: Mapping[str, City], *, ip_version: int = 6) -> str:
    """Write ``networks`` (CIDR -> city) as a MaxMind DB at ``path`` (a
    city with no name gets no ``city`` record).

    :returns: ``path``.
    :raises GeoDatabaseUnavailable: without ``mmdb-writer``.
    """
    try:
        from mmdb_writer import MMDBWriter
        from netaddr import IPSet
    except ImportError:
        raise GeoDatabaseUnavailable(
            "building the cluster's GeoIP database needs mmdb-writer: pip install 'fastedge[cluster]'"
        ) from None
    writer = MMDBWriter(ip_version=ip_version, database_type="GeoIP2-City", ipv4_compatible=ip_version == 6)
    for cidr, city in networks.items():
        record: dict[str, Any] = {
            "location": {"latitude": city.latitude, "longitude": city.longitude, "accuracy_radius": 50},
            "country": {"iso_code": city.country},
            "continent": {"code": city.continent},
        }
        if city.name:
            record["city"] = {"names": {"en": city.name}}
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(path)
    return path


def cluster_networks(networks: Mapping[str, str]) -> dict[str, City]:
    """CIDR -> city name, as CIDR -> :class:`City`."""
    return {cidr: CITIES[name] for cidr, name in networks.items()}
