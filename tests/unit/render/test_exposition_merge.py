"""exposition.merge: same-name families from several tiers are joined; a collision raises."""

from __future__ import annotations

import pytest

from kvscope.render.exposition import FamilyCollision, merge, render_text
from kvscope.render.families import Family, counter, gauge


def test_same_name_families_are_joined_in_order() -> None:
    fast = gauge("kvscope_gpu_up", "1 when NVML answers.").add({"gpu": "0"}, 1).add({"gpu": "1"}, 1)
    static = gauge("kvscope_gpu_up", "1 when NVML answers.").add({"gpu": "3"}, 0)
    other = gauge("kvscope_other", "Something else.").add({}, 5)
    merged = merge([fast.metric, other.metric, static.metric])
    assert [f.name for f in merged] == ["kvscope_gpu_up", "kvscope_other"]
    assert [(s.labels["gpu"], s.value) for s in merged[0].samples] == [
        ("0", 1), ("1", 1), ("3", 0)]
    body = render_text(merged).decode()
    assert body.count("# TYPE kvscope_gpu_up gauge") == 1
    assert 'kvscope_gpu_up{gpu="3"} 0.0' in body


def test_merge_leaves_its_inputs_alone() -> None:
    first = gauge("kvscope_x", "X.").add({"a": "1"}, 1)
    merge([first.metric, gauge("kvscope_x", "X.").add({"a": "2"}, 2).metric])
    assert len(first.metric.samples) == 1


@pytest.mark.parametrize("second", [
    counter("kvscope_x", "X.").add({}, 1),  # another type
    gauge("kvscope_x", "Another meaning.").add({}, 1),  # another HELP text
])
def test_a_name_collision_raises(second: Family) -> None:
    first = gauge("kvscope_x", "X.").add({}, 1)
    with pytest.raises(FamilyCollision, match="kvscope_x"):
        merge([first.metric, second.metric])
