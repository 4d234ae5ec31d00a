"""The embed page follows its tenant's settings: ``allowedOrigins`` become
the CSP ``frame-ancestors``, ``theme`` colours the page; another tenant's
settings never apply."""

from __future__ import annotations

from urllib.parse import quote

from twisted.trial.unittest import SynchronousTestCase

from fastedge.embed.policy import policy_of
from fastedge.store.model import ReadPreference
from fastedge.store.settings import DEFAULTS, TenantSettings, Theme
from fastedge.testing import NodeHarness

URL = "https://a.example/post"


class PolicyTests(SynchronousTestCase):
    def test_policy_of_settings(self) -> None:
        """Allowed origins frame the page; the theme is re-checked for CSS
        (a value the embed would not quote into a style sheet is dropped)."""
        self.assertEqual(policy_of(None).frame_ancestors, ())
        self.assertEqual(policy_of(DEFAULTS).frame_ancestors, ())
        settings = TenantSettings(
            allowed_origins=("https://a.example", "https://b.example:8443"),
            theme=Theme(accent="#1a73e8", font="x; } body { display: none"),
        )
        policy = policy_of(settings)
        self.assertEqual(policy.frame_ancestors, ("https://a.example", "https://b.example:8443"))
        self.assertEqual((policy.theme.accent, policy.theme.font), ("#1a73e8", None))

    def test_page_follows_its_tenants_settings(self) -> None:
        """Tenant A's page names only A's allowed origins in frame-ancestors
        and carries A's accent colour; tenant B (no settings) keeps the
        defaults (any site may frame it)."""
        node = NodeHarness(self)
        a, _ = node.create_tenant("Site A")
        b, _ = node.create_tenant("Site B")
        self.successResultOf(
            node.store.update_tenant_settings(
                a,
                {"allowedOrigins": ["https://a.example"], "theme": {"accent": "#1a73e8"}},
                read_preference=ReadPreference.PRIMARY,
            )
        )
        page_a = node.client().get("/embed/{}/?urlId={}".format(a, quote(URL, safe="")))
        page_b = node.client().get("/embed/{}/?urlId={}".format(b, quote(URL, safe="")))
        self.assertEqual((page_a.code, page_b.code), (200, 200))
        self.assertIn("frame-ancestors https://a.example", page_a.header("content-security-policy") or "")
        self.assertIn(b"#1a73e8", page_a.body)
        self.assertIn("frame-ancestors *", page_b.header("content-security-policy") or "")
        self.assertNotIn(b"#1a73e8", page_b.body)
