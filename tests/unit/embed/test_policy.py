"""The embed page follows its tenant's settings: ``allowedOrigins`` become
the CSP ``frame-ancestors``, ``theme`` colours the page; another tenant's
settings never apply."""

from __future__ import annotations

from urllib.parse import quote

from twisted.trial.unittest import SynchronousTestCase

from fastedge.embed.policy import policy_of, tenant_policy
from fastedge.store.model import ReadPreference
from fastedge.store.settings import DEFAULTS, TenantSettings, Theme
from tests.support.nodes import NodeHarness

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

    def test_policy_made_once_per_settings_read(self) -> None:
        """While the tenant's settings are cached, the policy (and the CSP
        header it carries) comes back at once, as the same object: nothing
        is re-derived per page. Once the cached settings expire, a changed
        setting makes a new policy."""
        node = NodeHarness(self)
        a, _ = node.create_tenant("Site A")
        policy = tenant_policy(node.api.tenants)
        first = self.successResultOf(policy(a))  # type: ignore[arg-type]
        again = policy(a)
        self.assertIs(again, first)
        self.assertIn(b"frame-ancestors *", first.csp)
        self.successResultOf(
            node.store.update_tenant_settings(
                a, {"allowedOrigins": ["https://a.example"]}, read_preference=ReadPreference.PRIMARY
            )
        )
        node.clock.advance(node.api_config.page_cache_seconds + 1)
        changed = self.successResultOf(policy(a))  # type: ignore[arg-type]
        self.assertEqual(changed.frame_ancestors, ("https://a.example",))
        self.assertIn(b"frame-ancestors https://a.example", changed.csp)

    def test_settings_change_reaches_the_page(self) -> None:
        """A page served from cached settings still follows a settings change
        within ``api.page_cache_seconds`` (the policy is not kept longer
        than the settings it was made from)."""
        node = NodeHarness(self)
        a, _ = node.create_tenant("Site A")
        path = "/embed/{}/?urlId={}".format(a, quote(URL, safe=""))
        before = node.client().get(path)
        self.assertIn("frame-ancestors *", before.header("content-security-policy") or "")
        self.successResultOf(
            node.store.update_tenant_settings(
                a,
                {"allowedOrigins": ["https://a.example"], "theme": {"accent": "#1a73e8"}},
                read_preference=ReadPreference.PRIMARY,
            )
        )
        node.clock.advance(node.api_config.page_cache_seconds + 1)
        after = node.client().get(path)
        self.assertIn("frame-ancestors https://a.example", after.header("content-security-policy") or "")
        self.assertIn(b"#1a73e8", after.body)
