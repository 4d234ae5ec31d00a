# -*- test-case-name: tests.unit.test_inputs -*-
"""Reading numbers and JSON that arrive from the network.

Two traps in the standard library make odd input a 500 instead of a 400:

- ``str.isdigit()`` is true for ``"²"`` (which ``int()`` refuses) and for
  ``"١"`` (ARABIC-INDIC DIGIT ONE, which ``int()`` reads as 1), and
  ``int()`` itself accepts ``" 7 "``, ``"+7"`` and ``"7_0"``. A number in a
  URL, a header or a token is ASCII digits and nothing else:
  :func:`parse_ascii_int`.
- ``json.loads`` recurses once per nesting level, so ``[[[[...]]]]`` a few
  thousand deep raises ``RecursionError``. :func:`loads_json` refuses
  anything nested deeper than :data:`MAX_JSON_DEPTH` before the parser
  sees it.
- ``json.loads`` turns an escaped lone surrogate (``"\\ud800"``, half of a
  UTF-16 pair) into a string no UTF-8 encoder takes: the store's drivers
  then fail mid-write (a comment with one was a 500). :func:`loads_json`
  refuses one, as I-JSON (RFC 7493) does; a pair is one character and
  passes.

Both raise :class:`InputError` (a ``ValueError``) with a message fit for
the client. This module imports nothing of fastedge, so every layer (the
API, live, the mesh, config) can use it.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "InputError", "json_depth_ok", "loads_json", "parse_ascii_int"]

#: An escaped UTF-16 surrogate in JSON text (a pair's half, or a lone one).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

#: Containers (arrays and objects) nested at most this deep in a JSON
#: document from a client; none of ours nests deeper than 3.
MAX_JSON_DEPTH = 32

_ASCII_DIGITS = re.compile(r"[0-9]+")

#: A JSON string (skipped whole: brackets inside it do not count) or a
#: bracket. Exact for valid JSON. The closing quote is optional so that an
#: unterminated string ends the scan instead of being tried again from
#: every later quote (quadratic time on hostile input).
_JSON_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[{]|[\]}]', re.DOTALL)


class InputError(ValueError):
    """Input that is not what the caller asked for; the message says what
    was wrong and can be shown to the client."""


def parse_ascii_int(text: str, low: int, high: int) -> int:
    """``text`` as an integer from ``low`` to ``high`` (inclusive).

    Accepts exactly the strings matching ``^[0-9]+$`` (ASCII digits; leading
    zeros allowed) whose value is in range. No sign, no spaces, no
    underscores, no other scripts' digits.

    :raises InputError: anything else.
    """
    if not _ASCII_DIGITS.fullmatch(text):
        raise InputError("not a decimal integer (ASCII digits only)")
    # Leading zeros stripped first, so a long run of them is fine and a long
    # number is refused before int() (which refuses over 4300 digits).
    significant = text.lstrip("0")
    if len(significant) > len(str(high)):
        raise InputError("out of range")
    value = int(significant or "0")
    if not low <= value <= high:
        raise InputError("out of range")
    return value


def json_depth_ok(text: str, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether the containers in JSON ``text`` nest at most ``max_depth``
    deep (exact for valid JSON; for invalid JSON either answer may come,
    and the parser refuses it anyway)."""
    if text.count("[") + text.count("{") <= max_depth:
        # Cannot nest deeper than there are containers: the common case
        # costs two C-level counts.
        return True
    depth = 0
    for m in _JSON_STRUCTURE.finditer(text):
        token = m.group()
        if token in ("[", "{"):
            depth += 1
            if depth > max_depth:
                return False
        elif token in ("]", "}"):
            depth -= 1
    return True


def loads_json(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON document from a client (bytes must be UTF-8).

    :param max_depth: arrays and objects may nest this deep at most.
    :returns: the value.
    :raises InputError: not UTF-8, not JSON, nested too deep, or a string
        with a lone surrogate (the message says which); never
        ``RecursionError``.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("the JSON is not UTF-8") from None
    else:
        text = data
    if not json_depth_ok(text, max_depth):
        raise InputError("the JSON nests deeper than {} levels".format(max_depth))
    try:
        value = json.loads(text)
    except ValueError:
        # JSONDecodeError, and int() refusing a number of over 4300 digits.
        raise InputError("not valid JSON") from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise InputError("a string holds a lone surrogate (\\uD800-\\uDFFF outside a pair): not text")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string in ``value`` (or an object's key) is no Unicode text."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False
