"""The disk cache's index across restarts and crashes, LRU eviction, and
the memory tier."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from fastedge.cdn.cache import DiskCache, MemoryTier, ObjectMeta
from fastedge.cdn.keys import cache_id


def _meta(size):
    return ObjectMeta(size=size, content_type="image/png", etag='"e"', last_modified=None)


class DiskCacheTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        self.cache = DiskCache(self.dir, max_bytes=1000)
        self.cache.open()

    def put(self, cache, key, data, now=1.0):
        temp = cache.temp_path()
        with open(temp, "wb") as f:
            f.write(data)
        return cache.commit(temp, "t", key, _meta(len(data)), now)

    def reopen(self):
        cache = DiskCache(self.dir, max_bytes=1000)
        cache.open()
        return cache

    def test_survives_restart(self):
        """Committed objects are there after a clean restart, with their metadata."""
        self.put(self.cache, "a", b"x" * 10)
        self.cache.close()
        cache = self.reopen()
        entry = cache.get(cache_id("t", "a"))
        self.assertEqual((entry.key, entry.meta.size, cache.size), ("a", 10, 10))

    def test_survives_crash(self):
        """Without a clean close (journal only, last line cut short) the
        index still has every committed object."""
        self.put(self.cache, "a", b"x" * 10)
        self.put(self.cache, "b", b"y" * 20)
        with open(os.path.join(self.dir, "index.journal"), "a") as f:
            f.write('{"op":"put","entry":{"id"')
        cache = self.reopen()
        self.assertEqual(len(cache), 2)

    def test_truncated_and_orphan_files_are_dropped(self):
        """An entry whose file has the wrong size is dropped; a file with no
        entry and leftover temporary files are removed."""
        a, _ = self.put(self.cache, "a", b"x" * 10)
        b, _ = self.put(self.cache, "b", b"y" * 10)
        with open(self.cache.path_for(a.id), "wb") as f:
            f.write(b"x" * 3)
        orphan = self.cache.path_for(cache_id("t", "orphan"))
        os.makedirs(os.path.dirname(orphan), exist_ok=True)
        with open(orphan, "wb") as f:
            f.write(b"z")
        with open(self.cache.temp_path(), "wb") as f:
            f.write(b"partial")
        cache = self.reopen()
        self.assertIsNone(cache.get(a.id))
        self.assertIsNotNone(cache.get(b.id))
        self.assertFalse(os.path.exists(orphan))
        self.assertEqual(os.listdir(os.path.join(self.dir, "tmp")), [])

    def test_lru_eviction(self):
        """Past the byte budget the least recently used objects go first,
        never the one just committed."""
        self.put(self.cache, "a", b"a" * 400)
        self.put(self.cache, "b", b"b" * 400)
        self.cache.get(cache_id("t", "a"))
        _, evicted = self.put(self.cache, "c", b"c" * 400)
        self.assertEqual([e.key for e in evicted], ["b"])
        self.assertEqual(self.cache.size, 800)
        self.assertFalse(os.path.exists(self.cache.path_for(cache_id("t", "b"))))

    def test_replace_and_remove(self):
        """A newer copy replaces the old in place; a removed object is gone
        after a restart too."""
        self.put(self.cache, "a", b"old")
        entry, _ = self.put(self.cache, "a", b"newer")
        with open(self.cache.path_for(entry.id), "rb") as f:
            self.assertEqual(f.read(), b"newer")
        self.assertEqual(self.cache.size, 5)
        self.cache.remove(entry.id)
        cache = self.reopen()
        self.assertEqual(len(cache), 0)


class MemoryTierTests(SynchronousTestCase):
    def test_bounded_and_tied_to_entries(self):
        """Objects over the per-object limit are not kept, the tier stays
        within its budget, and bytes of a replaced entry are not served."""
        from fastedge.cdn.cache import Entry

        tier = MemoryTier(max_bytes=10, max_object_bytes=6)
        a = Entry("a", "t", "a", _meta(6), 0.0)
        b = Entry("b", "t", "b", _meta(6), 0.0)
        tier.put(a, b"a" * 6)
        tier.put(b, b"b" * 6)
        self.assertIsNone(tier.get(a))
        self.assertEqual(tier.get(b), b"b" * 6)
        tier.put(Entry("c", "t", "c", _meta(7), 0.0), b"c" * 7)
        self.assertEqual(len(tier), 1)
        newer_b = Entry("b", "t", "b", _meta(6), 1.0)
        self.assertIsNone(tier.get(newer_b))
