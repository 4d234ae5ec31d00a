"""``fastedge-admin cluster up|status|down``: a whole cluster on one machine.

What a real deployment needs, made locally so it can be tried, demonstrated
and broken on purpose (``bench/chaos``):

- :mod:`~fastedge.cluster.plan`: the layout (deployments, nodes, cities,
  one ``127.0.0.x`` address per node, ports) and each node's config file;
  pure, no I/O beyond writing the files it is asked to.
- :mod:`~fastedge.cluster.postgres`: Debian's PostgreSQL servers run with
  ``pg_ctl`` (a primary per deployment, a hot standby beside every node),
  detached so they outlive the command.
- :mod:`~fastedge.cluster.processes`: detached processes (``twistd``
  nodes, the SeaweedFS origin), their pid files, and stopping them.
- :mod:`~fastedge.cluster.geodb`: the small GeoIP database built for the
  cluster's demo client networks.
- :mod:`~fastedge.cluster.command`: ``up``, ``status`` and ``down``.

All state lives under one directory (``--dir``, default
``./var/cluster``) with a ``cluster.json`` record of what was started, which
``status`` and ``down`` read.
"""
