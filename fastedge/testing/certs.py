"""Certificates for tests: a cached cluster CA, node certificates and
self-signed HTTPS certificates.
"""

from __future__ import annotations

import os
from typing import Any

_TEST_CA: dict[str, tuple[bytes, bytes]] = {}


def test_ca(name: str = "default") -> tuple[bytes, bytes]:
    """A cluster CA for tests, made once per process: ``(cert PEM, key PEM)``."""
    if name not in _TEST_CA:
        from fastedge.mesh.tls import create_ca

        _TEST_CA[name] = create_ca(name="fastedge test CA " + name)
    return _TEST_CA[name]


def write_node_certs(
    directory: str,
    node_id: str,
    *,
    ca: tuple[bytes, bytes] | None = None,
    cert_name: str | None = None,
    **cert_kw: Any,
) -> dict[str, str]:
    """Write a CA certificate and a node certificate and key into
    ``directory`` (``ca.pem``, ``node.pem``, ``node.key``).

    :param ca: the CA signing the certificate (default: :func:`test_ca`).
    :param cert_name: the name in the certificate (default: ``node_id``;
        another name makes a node whose certificate does not match it).
    :param cert_kw: passed to ``create_node_certificate`` (``not_after``...).
    :returns: the ``[mesh]`` config keys naming the files.
    """
    from fastedge.mesh.tls import create_node_certificate, write_file

    ca_cert, ca_key = ca or test_ca()
    cert, key = create_node_certificate(cert_name or node_id, ca_cert, ca_key, **cert_kw)
    paths = {
        "ca_file": os.path.join(directory, "ca.pem"),
        "cert_file": os.path.join(directory, "node.pem"),
        "key_file": os.path.join(directory, "node.key"),
    }
    write_file(paths["ca_file"], ca_cert, private=False)
    write_file(paths["cert_file"], cert, private=False)
    write_file(paths["key_file"], key, private=True)
    return paths


def write_certificate(directory: str, name: str, common_name: str | None = None) -> bytes:
    """Write a self-signed ``NAME.pem`` (key and certificate) for host
    ``common_name`` into a certificate directory; returns the PEM."""
    import datetime

    from fastedge.http.certs import self_signed_pem

    pem = self_signed_pem(common_name or name, datetime.datetime.now(datetime.UTC))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, "." + name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(pem)
    os.replace(tmp, os.path.join(directory, name + ".pem"))
    return pem
