"""parse_u64: a 64-bit unsigned counter as the kernel prints it, or None (never a raise)."""

from __future__ import annotations

import pytest

from kvscope.parsers.numbers import U64_MAX, parse_u64


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("42\n", 42),  # sysfs attributes end in a newline
        ("  7 ", 7),
        (str(U64_MAX), U64_MAX),
        ("00000000000000000001", 1),  # 20 digits, leading zeros
    ],
)
def test_counters(text: str, value: int) -> None:
    assert parse_u64(text) == value


@pytest.mark.parametrize(
    "text",
    [
        str(U64_MAX + 1),  # 20 digits, past 64 bits
        "1" * 21,
        "9" * 5000,  # past int()'s 4300-digit limit: refused before int() sees it
        "-1",
        "+1",
        "1.5",
        "0x10",
        "1e3",
        "12 34",
        "",
        " ",
        "N/A",
        "\u0661\u0662\u0663",  # Arabic-Indic digits: int() reads them, no kernel prints them
        "\uff11\uff12",  # fullwidth digits
    ],
)
def test_anything_else_is_none(text: str) -> None:
    assert parse_u64(text) is None
