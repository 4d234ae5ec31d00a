# -*- test-case-name: tests.integration.test_cluster -*-
"""The SeaweedFS command line of a local S3 origin: one ``weed server``
with master, volume, filer and S3 on ports of its own, bound to one
address. ``cluster up`` runs it, and so does the test harness
(``tests/support/seaweed.py``)."""

from __future__ import annotations

#: The ports a ``weed server`` needs, by name.
PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc", "metrics")


def weed_argv(weed: str, address: str, data_dir: str, ports: dict[str, int], identities: str) -> list[str]:
    """``weed server`` on ``address`` with its data in ``data_dir``.

    :param ports: a port for each of :data:`PORT_NAMES`.
    :param identities: the S3 identities file (``-s3.config``).
    """
    return [
        weed,
        "server",
        "-ip=" + address,
        "-ip.bind=" + address,
        "-master.telemetry=false",
        "-volume.max=16",
        "-dir=" + data_dir,
        "-master.port={}".format(ports["master"]),
        "-master.port.grpc={}".format(ports["master_grpc"]),
        "-volume.port={}".format(ports["volume"]),
        "-volume.port.grpc={}".format(ports["volume_grpc"]),
        "-filer",
        "-filer.port={}".format(ports["filer"]),
        "-filer.port.grpc={}".format(ports["filer_grpc"]),
        "-s3",
        "-s3.port={}".format(ports["s3"]),
        "-s3.port.grpc={}".format(ports["s3_grpc"]),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.config=" + identities,
        "-metricsPort={}".format(ports["metrics"]),
    ]
