"""The ``geo`` child: client address -> location, from a MaxMind DB held in
memory and rebuilt atomically off the reactor thread."""
