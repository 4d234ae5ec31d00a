"""The node's configuration: frozen dataclasses read from TOML.

:func:`load_config` is the only entry point. It reads ``etc/fastedge.toml``
(or another file), applies command-line overrides, and checks every key:
an unknown section or key, a wrong type or an impossible value raises
:class:`ConfigError` whose message names the key (``http.endpoint: ...``),
so ``twistd`` can refuse to start before anything listens.

Each child service receives only its own section; nothing reads the whole
config except ``fastedge.tap``.

The package has three modules: :mod:`.checks` (value checks),
:mod:`.sections` (one dataclass per table) and :mod:`.loader` (TOML to
dataclasses). Import from the package.
"""

from .checks import ConfigError, parse_host_port
from .loader import default_node_id, derive_zone, load_config, parse_config
from .sections import (
    ApiConfig,
    CdnConfig,
    CdnTenantConfig,
    CreditsConfig,
    DnsConfig,
    EdgeConfig,
    GeoConfig,
    HttpConfig,
    LiveConfig,
    LogConfig,
    MeshConfig,
    MongoConfig,
    NodeConfig,
    PostgresConfig,
    S3OriginConfig,
    SpamConfig,
    StoreConfig,
    TlsConfig,
    WebhooksConfig,
    ZoneConfig,
)

__all__ = [
    "ApiConfig",
    "CdnConfig",
    "CdnTenantConfig",
    "ConfigError",
    "CreditsConfig",
    "DnsConfig",
    "EdgeConfig",
    "GeoConfig",
    "HttpConfig",
    "LiveConfig",
    "LogConfig",
    "MeshConfig",
    "NodeConfig",
    "MongoConfig",
    "PostgresConfig",
    "S3OriginConfig",
    "SpamConfig",
    "StoreConfig",
    "TlsConfig",
    "WebhooksConfig",
    "ZoneConfig",
    "default_node_id",
    "derive_zone",
    "load_config",
    "parse_config",
    "parse_host_port",
]
