"""Distances on the Earth."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fastedge.geo.distance import great_circle_km
from fastedge.testing.dns import PLACES


class DistanceTests(SynchronousTestCase):
    def test_great_circle(self) -> None:
        """London-New York is about 5,570 km; a point is 0 km from itself."""
        lon, nyc = PLACES["london"], PLACES["new-york"]
        self.assertLess(abs(great_circle_km(lon[0], lon[1], nyc[0], nyc[1]) - 5570), 15)
        self.assertEqual(great_circle_km(10.0, 20.0, 10.0, 20.0), 0.0)

    def test_antimeridian(self) -> None:
        """Distances wrap around the antimeridian (179E to 179W is short)."""
        self.assertLess(great_circle_km(0.0, 179.0, 0.0, -179.0), 250)
