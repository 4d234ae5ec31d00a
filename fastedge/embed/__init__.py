"""The comment widget: the embed page the site owner's iframe loads, its
scripts, and the ``/widget.js`` snippet (docs/embedding.md)."""
