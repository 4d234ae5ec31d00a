# -*- test-case-name: tests.unit.store.test_settings -*-
"""A tenant's settings: one documented, validated object.

The store keeps a tenant's settings as an opaque JSON mapping
(:attr:`fastedge.store.model.Tenant.settings`); this module is the only
place that says what may be in it. Every key is optional and has a default,
so a tenant created before a key existed reads as the default. A change
(the tenant API's ``PATCH /api/v1/manage/settings`` or
``fastedge-admin tenant settings``) is checked whole by :func:`apply_patch`
before anything is written: an unknown key or a value of the wrong type or
shape raises :class:`SettingsError` naming the key (dotted inside
``theme``), and nothing changes.

The SSO secret is not part of this object: it is write-only, kept in its own
table (``tenant_sso_secrets``), and only its presence is ever shown (see
:func:`fastedge.identity.sso` and docs/sso.md).

Keys (the JSON the tenant API reads and writes; docs/openapi.yaml,
``TenantSettings``):

``moderation``
    ``"post"`` (default: comments are public at once) or ``"pre"`` (new
    comments of the public API wait as ``pending`` for a moderator).
``flagsToHide``
    Flags from distinct commenters after which a comment is hidden
    automatically; ``0`` never hides; ``null`` (default) follows the
    node's ``api.auto_hide_flags`` (3 as shipped).
``requireSignIn``
    ``true``: only SSO users may post, like or flag (default ``false``).
``defaultGroups``
    SSO group ids; a thread without its own lock is readable only by users
    in one of them. Empty (default): threads are public.
``allowedOrigins``
    Origins (``https://example.com``, ``http://localhost:8080``) that may
    embed the widget and call the public API from a browser (CORS).
    Empty (default): none.
``theme``
    ``{"accent": "#rrggbb", "font": "<CSS font-family list>"}``, each
    optional.
``blockedWords``
    Words and phrases that make a new public comment spam (docs/spam.md):
    matched whole, ignoring case, accents' compatibility forms and runs of
    spaces. At most :data:`MAX_BLOCKED_WORDS`, each 1 to 64 characters of
    :data:`BLOCKED_WORD_PATTERN`; duplicates (ignoring case) collapse.
    Empty (default): none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

#: Most SSO groups a user, a thread or a tenant default may name.
MAX_GROUPS = 100
#: Longest SSO group id.
MAX_GROUP_CHARS = 64
#: An SSO group id: 1 to :data:`MAX_GROUP_CHARS` characters, none of them a
#: control character (C0, DEL, C1), a space other than U+0020, an invisible
#: format character of the BMP (soft hyphen, zero-width and bidirectional
#: controls, BOM). A regular expression rather than ``str.isprintable()``
#: (whose unassigned code points change with each Unicode version) so that
#: docs/openapi.yaml states exactly the same rule: tests/unit/test_openapi.py
#: checks that the spec uses this very pattern. Lone surrogates (which JSON
#: escapes can carry but UTF-8 cannot) are refused apart, because regex
#: engines of other languages (Rust's, ECMAScript's with ``u``) refuse a
#: surrogate range in a pattern.
GROUP_ID_PATTERN = r"^[^\x00-\x1F\x7F-\xA0\xAD\u1680\u2000-\u200F\u2028-\u202F\u205F-\u206F\u3000\uFEFF]{1,64}$"
_GROUP_ID = re.compile(GROUP_ID_PATTERN)
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Most origins in ``allowedOrigins``.
MAX_ORIGINS = 50
#: Longest origin in ``allowedOrigins``.
MAX_ORIGIN_CHARS = 300
#: Highest ``flagsToHide``.
MAX_FLAGS_TO_HIDE = 10_000

#: Most entries of ``blockedWords``.
MAX_BLOCKED_WORDS = 500
#: An entry of ``blockedWords``: the same characters as an SSO group id
#: (no control or invisible characters), 1 to 64 of them; the spec states
#: this very pattern (tests/unit/test_openapi.py checks it).
BLOCKED_WORD_PATTERN = GROUP_ID_PATTERN

_HEX_COLOUR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
#: A CSS font-family list: names (quoted or not), commas, spaces. Nothing
#: that could end the declaration or the style sheet.
_FONT = re.compile(r"^[A-Za-z0-9 ,'\"_-]{1,120}$")
_H16 = "[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join(
    [
        "(?:{h}:){{7}}{h}",
        "(?:{h}:){{1,7}}:",
        "(?:{h}:){{1,6}}:{h}",
        "(?:{h}:){{1,5}}(?::{h}){{1,2}}",
        "(?:{h}:){{1,4}}(?::{h}){{1,3}}",
        "(?:{h}:){{1,3}}(?::{h}){{1,4}}",
        "(?:{h}:){{1,2}}(?::{h}){{1,5}}",
        "{h}:(?::{h}){{1,6}}",
        ":(?:(?::{h}){{1,7}}|:)",
    ]
).format(h=_H16)
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = "0*(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
#: What ``allowedOrigins`` accepts before normalising: http(s), a host name
#: or a bracketed IPv6 address, an optional port, an optional ``/``. One
#: regular expression so that docs/openapi.yaml states the very same rule
#: (tests/unit/test_openapi.py checks it); ``urlsplit`` then normalises.
ORIGIN_PATTERN = "^[Hh][Tt][Tt][Pp][Ss]?://(?:{label}(?:\\.{label})*|\\[(?:{ipv6})\\])(?::(?:{port})?)?/?$".format(
    label=_LABEL, ipv6=_IPV6, port=_PORT
)
_ORIGIN = re.compile(ORIGIN_PATTERN)
_HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")


class SettingsError(ValueError):
    """A settings change names an unknown key or a bad value.

    :ivar key: the offending key (``theme.accent`` inside the theme).
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__("{}: {}".format(key, message))
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Theme:
    """Theme variables of the embed page."""

    accent: str | None = None
    font: str | None = None


@dataclass(frozen=True)
class TenantSettings:
    """A tenant's settings; every field has its documented default."""

    moderation: str = "post"
    #: ``None``: the node's ``api.auto_hide_flags``.
    flags_to_hide: int | None = None
    require_sign_in: bool = False
    default_groups: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    theme: Theme = field(default_factory=Theme)
    blocked_words: tuple[str, ...] = ()

    @property
    def premoderated(self) -> bool:
        """Whether new public comments wait for a moderator."""
        return self.moderation == "pre"


DEFAULTS = TenantSettings()

_KEYS = ("moderation", "flagsToHide", "requireSignIn", "defaultGroups", "allowedOrigins", "theme", "blockedWords")
_THEME_KEYS = ("accent", "font")


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return "another type"


def _wrong(key: str, expected: str, value: Any) -> SettingsError:
    return SettingsError(key, "must be {}, not {}".format(expected, _type_name(value)))


def check_group_ids(key: str, value: Any) -> tuple[str, ...]:
    """A list of SSO group ids: at most :data:`MAX_GROUPS`, each 1 to
    :data:`MAX_GROUP_CHARS` characters of :data:`GROUP_ID_PATTERN`; duplicates collapse.

    :raises SettingsError: naming ``key``.
    """
    if not isinstance(value, list):
        raise _wrong(key, "a list of group ids", value)
    if len(value) > MAX_GROUPS:
        raise SettingsError(key, "at most {} groups".format(MAX_GROUPS))
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise _wrong(key, "a list of strings", item)
        if not _GROUP_ID.fullmatch(item) or _SURROGATE.search(item):
            raise SettingsError(
                key, "group ids are 1 to {} characters, without control or invisible characters".format(MAX_GROUP_CHARS)
            )
        if item not in out:
            out.append(item)
    return tuple(out)


def check_blocked_words(key: str, value: Any) -> tuple[str, ...]:
    """A ``blockedWords`` list: at most :data:`MAX_BLOCKED_WORDS` strings of
    :data:`BLOCKED_WORD_PATTERN`; a word repeated (ignoring case) is kept once.

    :raises SettingsError: naming ``key``.
    """
    if not isinstance(value, list):
        raise _wrong(key, "a list of words", value)
    if len(value) > MAX_BLOCKED_WORDS:
        raise SettingsError(key, "at most {} words".format(MAX_BLOCKED_WORDS))
    out: list[str] = []
    seen: set[str] = set()
    for item in value:
        if not isinstance(item, str):
            raise _wrong(key, "a list of strings", item)
        if not _GROUP_ID.fullmatch(item) or _SURROGATE.search(item):
            raise SettingsError(key, "words are 1 to 64 characters, without control or invisible characters")
        folded = item.casefold()
        if folded not in seen:
            seen.add(folded)
            out.append(item)
    return tuple(out)


def normalize_origin(key: str, value: Any) -> str:
    """``scheme://host[:port]`` in the form browsers send in ``Origin``.

    Only ``http`` and ``https``; no user, path, query or fragment; the host
    is lower-cased and a default port dropped.

    :raises SettingsError: naming ``key``.
    """
    if not isinstance(value, str):
        raise _wrong(key, "a list of origins (strings)", value)
    bad = SettingsError(key, "{!r} is not an origin like https://example.com".format(value[:100]))
    if len(value) > MAX_ORIGIN_CHARS or not _ORIGIN.fullmatch(value):
        raise bad
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise bad from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host or parts.username is not None or parts.password is not None:
        raise bad
    if parts.path not in ("", "/") or parts.query or parts.fragment or value.endswith("#") or value.endswith("?"):
        raise bad
    if host.startswith("[") or ":" in host:
        # An IPv6 literal: kept in brackets, as browsers send it.
        host = "[" + host.strip("[]") + "]"
    elif not _HOST.match(host):
        raise bad
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        return "{}://{}:{}".format(scheme, host, port)
    return "{}://{}".format(scheme, host)


def _check_theme(value: Any, current: Theme) -> Theme:
    if not isinstance(value, dict):
        raise _wrong("theme", "an object", value)
    changes: dict[str, Any] = {}
    for name, item in value.items():
        key = "theme." + str(name)
        if name not in _THEME_KEYS:
            raise SettingsError(key, "unknown setting (known: {})".format(", ".join(_THEME_KEYS)))
        if item is None:
            changes[name] = None
            continue
        if not isinstance(item, str):
            raise _wrong(key, "a string", item)
        if name == "accent" and not _HEX_COLOUR.match(item):
            raise SettingsError(key, "must be a colour like #1a73e8")
        if name == "font" and not _FONT.match(item):
            raise SettingsError(
                key, "must be a CSS font-family list of names (letters, digits, spaces, commas, quotes)"
            )
        changes[name] = item
    return replace(current, **changes)


def apply_patch(current: TenantSettings, patch: Mapping[str, Any]) -> TenantSettings:
    """``current`` with the keys of ``patch`` changed (JSON names).

    A key set to ``null`` goes back to its default.

    :raises SettingsError: for the first unknown key or bad value; nothing
        is applied then.
    """
    changes: dict[str, Any] = {}
    for key, value in patch.items():
        if key not in _KEYS:
            raise SettingsError(str(key), "unknown setting (known: {})".format(", ".join(_KEYS)))
        if value is None:
            changes[_FIELDS[key]] = getattr(DEFAULTS, _FIELDS[key])
            continue
        if key == "moderation":
            if not isinstance(value, str):
                raise _wrong(key, '"post" or "pre"', value)
            if value not in ("post", "pre"):
                raise SettingsError(key, 'must be "post" or "pre"')
            changes["moderation"] = value
        elif key == "flagsToHide" and value is None:
            changes["flags_to_hide"] = None
        elif key == "flagsToHide":
            if not isinstance(value, int) or isinstance(value, bool):
                raise _wrong(key, "an integer", value)
            if not 0 <= value <= MAX_FLAGS_TO_HIDE:
                raise SettingsError(key, "must be from 0 (never) to {}".format(MAX_FLAGS_TO_HIDE))
            changes["flags_to_hide"] = value
        elif key == "requireSignIn":
            if not isinstance(value, bool):
                raise _wrong(key, "true or false", value)
            changes["require_sign_in"] = value
        elif key == "defaultGroups":
            changes["default_groups"] = check_group_ids(key, value)
        elif key == "allowedOrigins":
            if not isinstance(value, list):
                raise _wrong(key, "a list of origins", value)
            if len(value) > MAX_ORIGINS:
                raise SettingsError(key, "at most {} origins".format(MAX_ORIGINS))
            origins: list[str] = []
            for item in value:
                origin = normalize_origin(key, item)
                if origin not in origins:
                    origins.append(origin)
            changes["allowed_origins"] = tuple(origins)
        elif key == "blockedWords":
            changes["blocked_words"] = check_blocked_words(key, value)
        else:
            changes["theme"] = _check_theme(value, current.theme)
    return replace(current, **changes)


_FIELDS = {
    "moderation": "moderation",
    "flagsToHide": "flags_to_hide",
    "requireSignIn": "require_sign_in",
    "defaultGroups": "default_groups",
    "allowedOrigins": "allowed_origins",
    "theme": "theme",
    "blockedWords": "blocked_words",
}


def to_json(settings: TenantSettings) -> dict[str, Any]:
    """The settings as the tenant API shows them (and the store keeps them)."""
    theme: dict[str, Any] = {}
    if settings.theme.accent is not None:
        theme["accent"] = settings.theme.accent
    if settings.theme.font is not None:
        theme["font"] = settings.theme.font
    return {
        "moderation": settings.moderation,
        "flagsToHide": settings.flags_to_hide,
        "requireSignIn": settings.require_sign_in,
        "defaultGroups": list(settings.default_groups),
        "allowedOrigins": list(settings.allowed_origins),
        "theme": theme,
        "blockedWords": list(settings.blocked_words),
    }


def from_stored(stored: Mapping[str, Any]) -> TenantSettings:
    """The settings a tenant's stored mapping holds.

    Stored settings were checked when written; a key this version does not
    know (written by a newer node during a rolling upgrade) is ignored
    rather than making the tenant unusable, and so is a value that no
    longer passes (the default applies).
    """
    out = DEFAULTS
    for key in _KEYS:
        if key in stored:
            try:
                out = apply_patch(out, {key: stored[key]})
            except SettingsError:
                continue
    return out


def groups_for(thread_groups: Sequence[str] | None, settings: TenantSettings) -> tuple[str, ...]:
    """The groups a thread is locked to: its own, else the tenant's default.

    :returns: empty when the thread is public.
    """
    if thread_groups is not None:
        return tuple(thread_groups)
    return settings.default_groups
