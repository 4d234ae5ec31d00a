"""twistd plugin: ``twistd fastedge`` runs one edge node.

Kept to one import so plugin scanning stays cheap; fastedge itself is
imported only when the plugin is used.
"""

from twisted.application.service import ServiceMaker

fastedge = ServiceMaker(
    "fastedge", "fastedge.tap", "One fastedge edge node.", "fastedge"
)
