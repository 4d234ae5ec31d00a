"""The [tls] and [cdn] sections of the configuration."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import ConfigError, load_config, parse_config

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class MediaConfigTests(SynchronousTestCase):
    def test_documented_file_is_the_defaults(self):
        """etc/fastedge.toml, with its new sections, equals the built-in defaults."""
        self.assertEqual(load_config(os.path.join(_ROOT, "etc", "fastedge.toml")), load_config(None))

    def test_tenants_and_origins(self):
        """Origins and tenants are tables keyed by name and tenant id."""
        cfg = parse_config(
            '[cdn.origins.s3]\nendpoint = "http://127.0.0.1:9000"\naccess_key_id = "AK"\nsecret_access_key = "SK"\n'
            '[cdn.tenants.abc]\norigin = "s3"\nbucket = "media"\nprefix = "a/"\n'
        )
        self.assertEqual(cfg.cdn.tenants["abc"].bucket, "media")
        self.assertNotIn("SK", repr(cfg))

    def test_bad_values_name_the_key(self):
        """Each bad value stops with the offending key in the message."""
        for text, key in (
            ('[cdn.tenants.abc]\nbucket = "media"', "cdn.tenants.abc.origin"),
            (
                '[cdn.origins.default]\n[cdn.tenants.abc]\nbucket = "B"',
                "cdn.tenants.abc.bucket",
            ),
            ("[cdn.origins.default]\n[cdn.tenants.abc]\n", "cdn.tenants.abc.bucket"),
            (
                '[cdn.origins.default]\n[cdn.tenants.abc]\nbucket = "media"\nprefix = "../x"',
                "cdn.tenants.abc.prefix",
            ),
            (
                '[cdn.origins.default]\nendpoint = "ftp://x"',
                "cdn.origins.default.endpoint",
            ),
            (
                '[cdn.origins.default]\nsecret_access_key = "x"',
                "cdn.origins.default.access_key_id",
            ),
            ("[cdn]\norigins = 1", "cdn.origins"),
            ('[cdn]\nupload_content_types = ["text html"]', "cdn.upload_content_types"),
            (
                "[cdn]\nmemory_max_object_bytes = 999999999",
                "cdn.memory_max_object_bytes",
            ),
            ('[tls]\nciphers = "NOTACIPHER"', "tls.ciphers"),
            ('[tls]\nmin_version = "1.0"', "tls.min_version"),
            ('[tls]\nendpoint = "ssl:443"', "tls.endpoint"),
            ("[tls]\nredirect_port = 70000", "tls.redirect_port"),
        ):
            with self.assertRaises(ConfigError, msg=text) as e:
                parse_config(text)
            self.assertTrue(str(e.exception).startswith(key + ":"), str(e.exception))
