"""``python -m ratewatch.processes.supervise FD [ARG ...]``: the lean supervisor that
``ratewatch up`` becomes once its options are checked (``handover.py``); the ARGs, ignored,
are up's command line, for ``ps``.

It reads the children and the held Valkey server from the descriptor ``FD``, supervises the
children until SIGINT or SIGTERM, then stops the server.  It imports the standard library
and the supervisor alone: this process runs as long as the tree does.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from ratewatch.processes.handover import decode
from ratewatch.processes.supervisor import LOG_FORMAT, Supervisor


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2 or not argv[1].isdigit():
        print("usage: python -m ratewatch.processes.supervise FD [ARG ...]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    with os.fdopen(int(argv[1]), "rb") as spec:
        children, server = decode(spec.read())
    try:
        return Supervisor(children).run()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
