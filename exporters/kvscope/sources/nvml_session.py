"""The agent's one NVML session, shared by every collector that reads NVML."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def _load_default() -> Any:
    from kvscope.sources.nvml import load_library

    return load_library()


class NvmlSession:
    """Loads the NVML library once (pynvml, or the simulator's fake) for the whole agent.

    `loader` raises kvscope.sources.nvml.NvmlUnavailable when there is no library; the error is
    raised again on every call, so each collector reports the missing library itself."""

    def __init__(self, loader: Callable[[], Any] = _load_default) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._library: Any = None

    def library(self) -> Any:
        with self._lock:
            if self._library is None:
                self._library = self._loader()
            return self._library
