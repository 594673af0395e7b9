"""A class as an earlier commit had it, for benches that measure a change against it in
the same process: ``git show REF:PATH``, executed as a module of its own."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def earlier_class(ref: str, path: str, name: str) -> type[Any]:
    """Class ``name`` of ``path`` (relative to the repository) as it was at ``ref``."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("earlier_" + Path(path).stem)
    sys.modules[module.__name__] = module  # a dataclass looks its module up there
    exec(compile(source, f"{ref}:{path}", "exec"), module.__dict__)
    return getattr(module, name)  # type: ignore[no-any-return]
