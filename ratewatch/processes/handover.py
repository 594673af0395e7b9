"""Handing ``ratewatch up``'s process over to a lean supervisor.

Checking ``up``'s options imports much of the limiter (the Redis client, which loads
OpenTelemetry's metrics SDK when it is installed, the API limits, the TLS context): some
35 MB that a process which only watches its children would keep as long as it runs.  So
once every option is checked and the embedded Valkey answers, ``up`` replaces itself
(``exec``: the same pid, the same children, the same terminal and signals) by
``python -m ratewatch.processes.supervise``, which imports the standard library and the
supervisor alone (about 14 MB) and starts the children.

What the new program needs comes in an unlinked temporary file whose descriptor it
inherits: the children's environments hold the Redis URL, which may carry a password, and
never go on a command line.  SIGINT and SIGTERM are blocked across the exec (a signal mask
survives it) and accepted again once the supervisor's handlers are in place, so a Ctrl-C
at that moment still stops the tree in order; the Valkey server it inherits is stopped by
its pid when the supervisor ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ratewatch.processes.supervisor import Child

SIGNALS = {signal.SIGINT, signal.SIGTERM}
PROGRAM = "ratewatch.processes.supervise"


@dataclass(frozen=True)
class HeldServer:
    """A server process this one started and must stop: its pid, the files to remove once
    it stopped."""

    pid: int
    leftovers: tuple[Path, ...] = ()
    stop_timeout: float = 30.0

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; the leftovers removed."""
        for path in self.leftovers:
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while not self._reaped():
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
                return
            time.sleep(0.05)

    def _reaped(self) -> bool:
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # not ours, or already reaped
            return True
        return pid != 0


def encode(children: Sequence[Child], server: HeldServer | None) -> bytes:
    """What the lean supervisor needs, as JSON."""
    spec: dict[str, Any] = {
        "children": [
            {
                "name": child.name,
                "args": child.args,
                "pid_file": None if child.pid_file is None else str(child.pid_file),
                "env": None if child.env is None else dict(child.env),
                "stop_timeout": child.stop_timeout,
                "nice": child.nice,
            }
            for child in children
        ],
        "server": None
        if server is None
        else {
            "pid": server.pid,
            "leftovers": [str(path) for path in server.leftovers],
            "stop_timeout": server.stop_timeout,
        },
    }
    return json.dumps(spec).encode()


def decode(data: bytes) -> tuple[list[Child], HeldServer | None]:
    """The children and the held server of ``encode``'s JSON."""
    spec = json.loads(data)
    children = [
        Child(
            name=entry["name"],
            args=list(entry["args"]),
            pid_file=None if entry["pid_file"] is None else Path(entry["pid_file"]),
            env=entry["env"],
            stop_timeout=float(entry["stop_timeout"]),
            nice=int(entry["nice"]),
        )
        for entry in spec["children"]
    ]
    held = spec["server"]
    server = (
        None
        if held is None
        else HeldServer(
            pid=int(held["pid"]),
            leftovers=tuple(Path(path) for path in held["leftovers"]),
            stop_timeout=float(held["stop_timeout"]),
        )
    )
    return children, server


def hand_over(children: Sequence[Child], server: HeldServer | None) -> NoReturn:
    """Replace this process by the lean supervisor of ``children`` (see the module's
    docstring); returns only by raising OSError if the exec failed."""
    import tempfile  # here: the lean supervisor decodes with this module, without it

    spec = tempfile.TemporaryFile()  # noqa: SIM115 (it must outlive this function: exec)
    spec.write(encode(children, server))
    spec.flush()
    spec.seek(0)
    descriptor = spec.fileno()
    os.set_inheritable(descriptor, True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        # after the descriptor, up's own arguments: what `ps` shows of this process
        os.execv(sys.executable, [sys.executable, "-m", PROGRAM, str(descriptor), *sys.argv[1:]])
    except OSError:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        spec.close()
        raise
