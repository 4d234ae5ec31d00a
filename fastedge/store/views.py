# -*- test-case-name: tests.unit.api.test_public,tests.unit.api.test_live_events -*-
"""What readers see of the store's records, as JSON-ready values.

The one public view of a comment, shared by the comment API, the widget
and live events, so a reader sees the same fields wherever they look.
"""

from __future__ import annotations

from typing import Any

from .model import Comment


def public_comment(c: Comment) -> dict[str, Any]:
    """What any reader may see of an approved comment."""
    return {
        "id": c.id,
        "parentId": c.parent_id,
        "authorId": c.author_id,
        "displayName": c.display_name,
        "html": c.body_html,
        "createdAt": c.created_ms,
        "editedAt": c.edited_ms,
        "likes": c.like_count,
    }
