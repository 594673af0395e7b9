"""What the tests share, one module per concept: the servers the suite starts (``servers``,
``kafka``), the credentials they share (``credentials``), polling (``polling``), events and
traffic to feed them (``events``, ``traffic``, ``scenarios``, ``synthetic``), and the
helpers several test modules need.  Test modules import from here, never from each other;
the fixtures built on it are in ``tests/conftest.py``."""
