"""Follow log files (engine containers' logs) and hand back complete new lines.

Survives rotation (the path now names another inode: start that file from its beginning) and
truncation (the file is shorter than the offset: start over), reads at most `max_bytes` per poll
across all files (the rest waits for the next poll), and keeps at most MAX_PENDING bytes of an
unfinished line. Files present at the first poll are followed from their end unless `from_start`
(one-shot commands read the whole file); files that appear later are read from their start, so a
new pod's first failures count. Blocking: called through the runtime's thread pool.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

MAX_PENDING = 64 * 1024


@dataclass
class _Followed:
    inode: int
    offset: int
    pending: bytes = b""


class LogFollower:
    def __init__(self, patterns: tuple[str, ...], max_bytes: int, *,
                 from_start: bool = False) -> None:
        self.patterns = patterns
        self.max_bytes = max_bytes
        self.from_start = from_start
        self._files: dict[str, _Followed] = {}
        self._first = True
        self._turn = 0
        self.dropped_bytes = 0  # partial lines longer than MAX_PENDING, discarded

    def _paths(self) -> list[str]:
        found: set[str] = set()
        for pattern in self.patterns:
            # Absolute patterns such as /var/log/pods/*/*/*.log: Path.glob takes relative ones.
            found.update(p for p in glob.glob(pattern) if Path(p).is_file())  # noqa: PTH207
        return sorted(found)

    def poll(self) -> list[tuple[str, list[str]]]:
        paths = self._paths()
        for gone in set(self._files) - set(paths):
            del self._files[gone]
        budget = self.max_bytes
        out: list[tuple[str, list[str]]] = []
        # Start at a different file each poll so one busy log cannot starve the others.
        order = paths[self._turn % len(paths):] + paths[:self._turn % len(paths)] if paths else []
        self._turn += 1
        for path in order:
            if budget <= 0:
                break
            lines, used = self._read(path, budget)
            budget -= used
            if lines:
                out.append((path, lines))
        self._first = False
        return out

    def _read(self, path: str, budget: int) -> tuple[list[str], int]:
        try:
            st = Path(path).stat()
        except OSError:
            return [], 0
        state = self._files.get(path)
        if state is None or state.inode != st.st_ino:
            start = st.st_size if (self._first and state is None and not self.from_start) else 0
            state = self._files[path] = _Followed(st.st_ino, start)
        elif st.st_size < state.offset:  # truncated in place (copytruncate)
            state.offset, state.pending = 0, b""
        want = min(budget, st.st_size - state.offset)
        if want <= 0:
            return [], 0
        try:
            with Path(path).open("rb") as f:
                f.seek(state.offset)
                data = f.read(want)
        except OSError:
            return [], 0
        state.offset += len(data)
        chunk = state.pending + data
        *complete, rest = chunk.split(b"\n")
        if len(rest) > MAX_PENDING:
            self.dropped_bytes += len(rest)
            rest = b""
        state.pending = rest
        return [line.decode("utf-8", "replace") for line in complete], len(data)
