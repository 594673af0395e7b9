"""What the kernel says about a process: its children's pids in a data dir, its threads'
names and nice values, its environment."""

from __future__ import annotations

from pathlib import Path


def child_pid(data_dir: Path, name: str) -> int:
    """The pid of ``ratewatch up``'s child ``name`` (``limiter``, ``pipeline``, …)."""
    return int((data_dir / "run" / f"{name}.pid").read_text())


def thread_names(pid: int) -> list[str]:
    """The names of the threads of ``pid`` (each task's ``comm``)."""
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return names


def nice_values(pid: int, *, but: tuple[str, ...] = ()) -> set[int]:
    """The nice values of the threads of ``pid`` (field 19 of each task's stat), but those
    named in ``but``."""
    values = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        if name not in but:
            # the fields after the command name in parentheses, which may hold spaces
            values.add(int(stat.rpartition(")")[2].split()[16]))
    return values


def environment_of(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with (``/proc/<pid>/environ``)."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)


def command_line(pid: int) -> list[str]:
    """The arguments ``pid`` was started with (``/proc/<pid>/cmdline``)."""
    return [arg.decode() for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
