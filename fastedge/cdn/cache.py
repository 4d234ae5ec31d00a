# -*- test-case-name: tests.unit.cdn.test_cache -*-
"""The media cache: objects on disk, an index that survives restarts, least
recently used objects evicted past a byte budget, and a small in-memory tier
for hot objects in front.

Layout under the cache directory::

    objects/ab/abcdef...   one file per object, named by its cache id
    tmp/                   downloads in progress (emptied at start)
    index.snapshot         every entry, least recently used first
    index.journal          puts and deletes since the snapshot

An object reaches ``objects/`` only by ``rename`` of a complete, verified
temporary file, and is recorded in the journal after the rename; a delete is
journaled before the unlink. So after a crash, an entry whose file is
missing or has the wrong size is dropped, and a file with no entry is
removed: a truncated object is never served. (There is no ``fsync``: like
nginx's proxy cache, a power loss may cost cached objects, which are then
fetched again; it never costs correctness of what the index says exists,
since sizes are checked at start.)

The LRU order lives in memory and is written with each snapshot (every
``cdn.index_snapshot_seconds`` and at stop); after a crash it is as old as
the last snapshot, which only makes eviction slightly less exact.

This module does file I/O but never touches the reactor: the caller passes
the time in.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from twisted.logger import Logger

from .keys import cache_id

__all__ = ["DiskCache", "Entry", "MemoryTier", "ObjectMeta"]

_INDEX_VERSION = 1


@dataclass(frozen=True)
class ObjectMeta:
    """What the origin said about an object's representation."""

    size: int
    content_type: str
    etag: str | None = None
    last_modified: str | None = None


@dataclass(eq=False)
class Entry:
    """One cached object.

    :ivar validated_at: when the origin last confirmed this copy (a fill or a
        304); the copy is fresh for the tenant's ``fresh_seconds`` after it.
    """

    id: str
    tenant: str
    key: str
    meta: ObjectMeta
    validated_at: float
    #: Response headers, built once by the resource layer and kept here.
    header_cache: Any = field(default=None, repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "key": self.key,
            "meta": asdict(self.meta),
            "validated_at": self.validated_at,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Entry:
        meta = ObjectMeta(**record["meta"])
        entry = cls(
            record["id"],
            record["tenant"],
            record["key"],
            meta,
            float(record["validated_at"]),
        )
        if entry.id != cache_id(entry.tenant, entry.key):
            raise ValueError("cache id does not match tenant and key")
        return entry


class DiskCache:
    """The on-disk objects and their index (see the module docstring).

    :param max_bytes: the byte budget; committing past it evicts the least
        recently used objects.
    """

    _log = Logger()

    def __init__(self, directory: str, *, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._by_tenant: dict[str, dict[str, Entry]] = {}
        self.size = 0
        self._journal: Any = None

    # Paths

    def path_for(self, entry_id: str) -> str:
        return os.path.join(self.directory, "objects", entry_id[:2], entry_id)

    def temp_path(self) -> str:
        """A fresh path for a download in progress."""
        return os.path.join(self.directory, "tmp", uuid.uuid4().hex)

    # Opening and closing

    def open(self) -> None:
        """Load the index, drop what the disk contradicts, clean up, compact."""
        os.makedirs(os.path.join(self.directory, "objects"), exist_ok=True)
        tmp = os.path.join(self.directory, "tmp")
        os.makedirs(tmp, exist_ok=True)
        for name in os.listdir(tmp):
            _unlink(os.path.join(tmp, name))
        records: OrderedDict[str, Entry] = OrderedDict()
        for op, value in self._read_index():
            if op == "put":
                try:
                    entry = Entry.from_record(value)
                except (KeyError, TypeError, ValueError):
                    continue
                records.pop(entry.id, None)
                records[entry.id] = entry
            elif op == "del":
                records.pop(value, None)
            elif op == "validated" and value.get("id") in records:
                records[value["id"]].validated_at = float(value["at"])
        dropped = 0
        for entry in records.values():
            try:
                size = os.stat(self.path_for(entry.id)).st_size
            except OSError:
                size = -1
            if size != entry.meta.size:
                dropped += 1
                continue
            self._add(entry)
        orphans = self._remove_orphans()
        self.snapshot()
        self._log.info(
            "media cache opened at {directory}: {count} objects, {size} bytes "
            "({dropped} index entries without their file, {orphans} files without an entry removed)",
            directory=self.directory,
            count=len(self._entries),
            size=self.size,
            dropped=dropped,
            orphans=orphans,
        )
        self.evict_to_fit()

    def close(self) -> None:
        """Write a final snapshot (the LRU order) and close the journal."""
        if self._journal is not None:
            self.snapshot()
            self._journal.close()
            self._journal = None

    def _read_index(self) -> Iterator[tuple[str, Any]]:
        snapshot = os.path.join(self.directory, "index.snapshot")
        journal = os.path.join(self.directory, "index.journal")
        for path in (snapshot, journal):
            try:
                f = open(path, encoding="utf-8")
            except FileNotFoundError:
                continue
            with f:
                for line in f:
                    try:
                        item = json.loads(line)
                        op = item["op"]
                    except (ValueError, KeyError, TypeError):
                        # A line cut short by a crash: everything before it counts.
                        continue
                    if op == "put":
                        yield op, item["entry"]
                    elif op == "del":
                        yield op, item["id"]
                    elif op == "validated":
                        yield op, item

    def _remove_orphans(self) -> int:
        removed = 0
        objects = os.path.join(self.directory, "objects")
        for sub in os.listdir(objects):
            subdir = os.path.join(objects, sub)
            if not os.path.isdir(subdir):
                continue
            for name in os.listdir(subdir):
                if name not in self._entries:
                    _unlink(os.path.join(subdir, name))
                    removed += 1
        return removed

    def snapshot(self) -> None:
        """Write every entry (LRU order) to a new snapshot; empty the journal."""
        path = os.path.join(self.directory, "index.snapshot")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"op": "version", "version": _INDEX_VERSION}) + "\n")
            for entry in self._entries.values():
                f.write(json.dumps({"op": "put", "entry": entry.record()}, separators=(",", ":")) + "\n")
        os.replace(tmp, path)
        if self._journal is not None:
            self._journal.close()
        self._journal = open(
            os.path.join(self.directory, "index.journal"),
            "w",
            encoding="utf-8",
            buffering=1,
        )

    def _log_op(self, record: dict[str, Any]) -> None:
        if self._journal is not None:
            self._journal.write(json.dumps(record, separators=(",", ":")) + "\n")

    # Lookups

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self._entries

    def get(self, entry_id: str) -> Entry | None:
        """The entry, marked most recently used."""
        entry = self._entries.get(entry_id)
        if entry is not None:
            self._entries.move_to_end(entry_id)
        return entry

    def entries(self, tenant: str) -> list[Entry]:
        """Every entry of one tenant (for purges by prefix)."""
        return list(self._by_tenant.get(tenant, {}).values())

    # Changes

    def _add(self, entry: Entry) -> None:
        self._entries[entry.id] = entry
        self._by_tenant.setdefault(entry.tenant, {})[entry.id] = entry
        self.size += entry.meta.size

    def _forget(self, entry_id: str) -> Entry | None:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return None
        tenant = self._by_tenant.get(entry.tenant)
        if tenant is not None:
            tenant.pop(entry_id, None)
            if not tenant:
                del self._by_tenant[entry.tenant]
        self.size -= entry.meta.size
        return entry

    def commit(self, temp_path: str, tenant: str, key: str, meta: ObjectMeta, now: float) -> tuple[Entry, list[Entry]]:
        """Move a complete, verified download into the cache.

        :returns: the new entry, and the entries evicted to make room (the
            replaced older copy of the same object is not among them).
        """
        entry = Entry(cache_id(tenant, key), tenant, key, meta, now)
        final = self.path_for(entry.id)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        # rename() replaces an older copy atomically; readers that have it
        # open keep reading the old file.
        os.replace(temp_path, final)
        self._forget(entry.id)
        self._add(entry)
        self._log_op({"op": "put", "entry": entry.record()})
        return entry, self.evict_to_fit(keep=entry.id)

    def mark_validated(self, entry: Entry, now: float) -> None:
        """The origin confirmed this copy (304): fresh again from ``now``."""
        entry.validated_at = now
        if entry.id in self._entries:
            self._log_op({"op": "validated", "id": entry.id, "at": now})

    def remove(self, entry_id: str) -> Entry | None:
        """Delete one object (purge, origin 404); returns it if it was cached."""
        entry = self._forget(entry_id)
        if entry is not None:
            self._log_op({"op": "del", "id": entry_id})
            _unlink(self.path_for(entry_id))
        return entry

    def evict_to_fit(self, keep: str | None = None) -> list[Entry]:
        """Evict least recently used objects until the cache fits its budget."""
        evicted = []
        while self.size > self.max_bytes and self._entries:
            oldest = next(iter(self._entries))
            if oldest == keep:
                if len(self._entries) == 1:
                    break
                self._entries.move_to_end(oldest)
                continue
            entry = self.remove(oldest)
            if entry is not None:
                evicted.append(entry)
        return evicted


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class MemoryTier:
    """Hot objects' bytes in memory, least recently used dropped first.

    Keyed by cache id and tied to the :class:`Entry` they belong to, so a
    replaced or purged object is never served from here.
    """

    def __init__(self, *, max_bytes: int, max_object_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_object_bytes = max_object_bytes
        self._items: OrderedDict[str, tuple[Entry, bytes]] = OrderedDict()
        self.size = 0

    def __len__(self) -> int:
        return len(self._items)

    def admits(self, size: int) -> bool:
        return size <= self.max_object_bytes and size <= self.max_bytes

    def get(self, entry: Entry) -> bytes | None:
        item = self._items.get(entry.id)
        if item is None:
            return None
        if item[0] is not entry:
            self.discard(entry.id)
            return None
        self._items.move_to_end(entry.id)
        return item[1]

    def put(self, entry: Entry, data: bytes) -> None:
        if not self.admits(len(data)):
            return
        self.discard(entry.id)
        self._items[entry.id] = (entry, data)
        self.size += len(data)
        while self.size > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self.size -= len(old)

    def discard(self, entry_id: str) -> None:
        item = self._items.pop(entry_id, None)
        if item is not None:
            self.size -= len(item[1])
