# -*- test-case-name: tests.unit.geo.test_lookup -*-
"""The in-memory GeoIP index: pure, blocking code with no reactor.

:func:`build_index` reads a MaxMind DB (the GeoIP2/GeoLite2 City shape)
into memory, checks it, counts its networks and returns a
:class:`GeoIndex`. It blocks for as long as that takes (about a second for
GeoLite2-City), so the ``geo`` service runs it in a thread.

Decision: the index is MaxMind's own search tree, held in memory (a private
``memfd`` copy read by maxminddb's C extension, or the pure-Python reader
where that is missing), not a table of our own. Walking every network into a
Python structure takes tens of seconds of GIL time and hundreds of MB for
GeoLite2-City; the tree answers in ~5-10 us, and the DNS server caches each
client network's location anyway. The copy makes the index immune to the
file being rewritten in place underneath it.
"""

from __future__ import annotations

import io
import ipaddress
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GeoIndex", "GeoIndexError", "Location", "build_index", "check_database"]

#: Where MaxMind's metadata section starts (the last occurrence of it).
_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"


class GeoIndexError(Exception):
    """The database cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where a client is, as far as the database knows."""

    latitude: float
    longitude: float
    #: ISO 3166-1 alpha-2 country code, when known.
    country: str | None = None
    #: Continent code (``EU``, ``NA``, ...), when known.
    continent: str | None = None


def _location(record: Any) -> Location | None:
    """The location part of a City-shaped record, or ``None``."""
    if not isinstance(record, Mapping):
        return None
    loc = record.get("location")
    if not isinstance(loc, Mapping):
        return None
    lat, lon = loc.get("latitude"), loc.get("longitude")
    if not isinstance(lat, (int, float)) or not isinstance(lon, (int, float)):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    country = record.get("country")
    continent = record.get("continent")
    return Location(
        float(lat),
        float(lon),
        country.get("iso_code") if isinstance(country, Mapping) else None,
        continent.get("code") if isinstance(continent, Mapping) else None,
    )


class GeoIndex:
    """One immutable generation of the index.

    :ivar networks: networks of the database that carry data.
    :ivar build_seconds: how long :func:`build_index` took.
    """

    def __init__(
        self,
        reader: Any,
        *,
        path: str,
        networks: int,
        database_type: str,
        build_epoch: int,
        build_seconds: float,
    ) -> None:
        import maxminddb

        self._reader = reader
        self._invalid = maxminddb.InvalidDatabaseError
        self._ipv4_only = reader.metadata().ip_version == 4
        self.path = path
        self.networks = networks
        self.database_type = database_type
        self.build_epoch = build_epoch
        self.build_seconds = build_seconds

    def locate(self, address: str) -> tuple[Location | None, int]:
        """Where ``address`` is.

        :returns: the location (``None`` when the database has none) and the
            prefix length of the database network that holds the answer.
        :raises ValueError: ``address`` is not an IP address.
        """
        if self._ipv4_only and ":" in address:
            # An IPv4-only database knows nothing of IPv6; the whole space is
            # one unknown network.
            ipaddress.IPv6Address(address)
            return None, 0
        try:
            record, prefix = self._reader.get_with_prefix_len(address)
        except self._invalid:
            # A data record the checks at build time did not reach is
            # corrupt: this network is unknown, the rest still works.
            return None, 0
        return _location(record), int(prefix)

    def close(self) -> None:
        """Release the memory (only once no lookup can still use it)."""
        self._reader.close()


def _count_networks(data: bytes, node_count: int, record_size: int, data_size: int) -> int:
    """Networks with data, read straight from the search tree: each record
    above ``node_count`` points into the data section. The tree is an array
    in which every node appears once (IPv4-in-IPv6 aliases point at shared
    nodes), so nothing is counted twice. Pointers out of range mean a
    corrupt file."""
    node_bytes = record_size * 2 // 8
    tree = memoryview(data)[: node_count * node_bytes]
    if len(tree) != node_count * node_bytes:
        raise GeoIndexError("the search tree is truncated")
    limit = node_count + 16 + data_size
    values: list[int] = []
    if record_size == 24:
        for hi1, lo1, hi2, lo2 in struct.iter_unpack(">HBHB", tree):
            values.append((hi1 << 8) | lo1)
            values.append((hi2 << 8) | lo2)
    elif record_size == 28:
        for hi1, lo1, mid, hi2, lo2 in struct.iter_unpack(">HBBHB", tree):
            values.append(((mid >> 4) << 24) | (hi1 << 8) | lo1)
            values.append(((mid & 0x0F) << 24) | (hi2 << 8) | lo2)
    elif record_size == 32:
        for pair in struct.iter_unpack(">II", tree):
            values.extend(pair)
    else:
        raise GeoIndexError(f"unsupported record size {record_size}")
    networks = 0
    for value in values:
        if value > node_count:
            if value >= limit:
                raise GeoIndexError("a search tree record points past the data section")
            networks += 1
    return networks


def _open_reader(data: bytes) -> Any:
    """A reader over a private in-memory copy of ``data``: maxminddb's C
    extension over a memfd when both exist, else the pure-Python reader."""
    import maxminddb

    memfd_create = getattr(os, "memfd_create", None)
    extension = getattr(maxminddb, "extension", None)
    if memfd_create is not None and extension is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("fastedge-geoip", getattr(os, "MFD_CLOEXEC", 0))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # The C reader maps the memfd; the mapping keeps it alive once
            # our descriptor is closed.
            return maxminddb.open_database(f"/proc/self/fd/{fd}", maxminddb.MODE_MMAP_EXT)
        finally:
            os.close(fd)
    return maxminddb.open_database(io.BytesIO(data), maxminddb.MODE_FD)


def check_database(path: str) -> None:
    """A cheap look at ``path`` before anything starts: readable, and ending
    in a MaxMind metadata section. (The full check is :func:`build_index`.)

    :raises GeoIndexError: saying what is wrong.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            # The metadata section is at most 128 KiB from the end.
            f.seek(max(0, size - 128 * 1024))
            tail = f.read()
    except OSError as e:
        raise GeoIndexError(f"cannot read {path} ({e.strerror})") from None
    if _METADATA_MARKER not in tail:
        raise GeoIndexError(f"{path} is not a MaxMind DB (no metadata section)")


def build_index(path: str) -> GeoIndex:
    """Read and check the MaxMind DB at ``path``. Blocking.

    :raises GeoIndexError: the file is missing, unreadable or not a usable
        MaxMind DB; the message says which.
    """
    # Imported with the first index a node builds (none without geo.database).
    from maxminddb import InvalidDatabaseError

    started = time.perf_counter()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise GeoIndexError(f"cannot read {path} ({e.strerror})") from None
    meta_at = data.rfind(_METADATA_MARKER)
    if meta_at < 0:
        raise GeoIndexError(f"{path} is not a MaxMind DB (no metadata section)")
    try:
        reader = _open_reader(data)
    except (InvalidDatabaseError, ValueError, OSError, struct.error) as e:
        raise GeoIndexError(f"{path} is not a usable MaxMind DB ({e})") from None
    try:
        meta = reader.metadata()
        if meta.ip_version not in (4, 6):
            raise GeoIndexError(f"{path}: unsupported ip_version {meta.ip_version}")
        tree_size = meta.node_count * meta.record_size * 2 // 8
        data_size = meta_at - tree_size - 16
        if data_size < 0:
            raise GeoIndexError(f"{path}: the search tree is truncated")
        try:
            networks = _count_networks(data, meta.node_count, meta.record_size, data_size)
        except GeoIndexError as e:
            raise GeoIndexError(f"{path}: {e}") from None
        # A few real lookups decode data records: a corrupt data section
        # shows here rather than at query time.
        probes = ["1.1.1.1", "8.8.8.8", "81.2.69.142"] + (["2001:db8::1", "2a02::1"] if meta.ip_version == 6 else [])
        for probe in probes:
            try:
                reader.get_with_prefix_len(probe)
            except (
                InvalidDatabaseError,
                ValueError,
                struct.error,
                UnicodeDecodeError,
            ) as e:
                raise GeoIndexError(f"{path}: corrupt data section ({e})") from None
        return GeoIndex(
            reader,
            path=path,
            networks=networks,
            database_type=str(meta.database_type),
            build_epoch=int(meta.build_epoch),
            build_seconds=time.perf_counter() - started,
        )
    except BaseException:
        reader.close()
        raise
