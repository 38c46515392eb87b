"""render_text formats each distinct label set once and plain floats by repr: the output must
stay what prometheus_client's rules give for every value and every escape."""

from __future__ import annotations

from prometheus_client.core import Metric

from kvscope.render.exposition import render_text


def test_shared_label_sets_escapes_and_go_floats() -> None:
    fam = Metric("demo", 'HELP with \\ and\nnewline', "gauge")
    tricky = {"b": 'say "hi"\\\n', "a": "z"}
    plain = {"gpu": "0", "UUID": "GPU-1"}
    values = [0.0, -0.0, 999999.0, 1e6, 1234567.0, 2.5e15, 1e-7, -5e9, float("inf"),
              float("-inf"), float("nan"), 3, 10**7, True]
    for value in values:
        fam.add_sample("demo", dict(tricky), value)
    fam.add_sample("demo", dict(plain), 1.5)
    fam.add_sample("demo", {"UUID": "GPU-1", "gpu": "0"}, 2.5)  # same set, other order
    fam.add_sample("demo", {}, 7.0)
    fam.add_sample("demo_created", {}, 1.0)
    lines = render_text([fam]).decode().splitlines()
    assert lines[:2] == ["# HELP demo HELP with \\\\ and\\nnewline", "# TYPE demo gauge"]
    escaped = 'demo{a="z",b="say \\"hi\\"\\\\\\n"}'
    assert lines[2:2 + len(values)] == [f"{escaped} {v}" for v in (
        "0.0", "-0.0", "999999.0", "1e+06", "1.234567e+06", "2.5e+15", "1e-07", "-5000000000.0",
        "+Inf", "-Inf", "NaN", "3.0", "1e+07", "1.0")]
    assert lines[2 + len(values):] == ['demo{UUID="GPU-1",gpu="0"} 1.5',
                                       'demo{UUID="GPU-1",gpu="0"} 2.5', "demo 7.0"]
