"""Unsigned counters as the kernel and its tools print them.

Hardware counters are at most 64 bits wide. A longer number is not a counter but a corrupted
read or a broken tool; read as a Python int it would later fail the float conversion of the
exposition (and above 4300 digits fail int() itself), taking every other series of the poll with
it. So it is refused here, as one bad value.
"""

from __future__ import annotations

import re

U64_MAX = 2**64 - 1
# ASCII only: \d alone also matches other scripts' digits, which no kernel counter prints.
_U64 = re.compile(r"^\s*([0-9]{1,20})\s*$", re.ASCII)  # 2^64 - 1 has 20 digits


def parse_u64(text: str) -> int | None:
    """A decimal unsigned 64-bit value (surrounding whitespace allowed); None for anything else,
    including numbers too large for 64 bits."""
    m = _U64.match(text)
    if m is None:
        return None
    value = int(m.group(1))
    return value if value <= U64_MAX else None
