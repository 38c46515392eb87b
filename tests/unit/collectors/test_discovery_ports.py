"""A pod's port annotation goes through config.parse_port: only ASCII digits make a port, and a
character that str.isdigit() takes but int() refuses makes that one pod refused (`port`), not
the whole node's discovery fail."""

from __future__ import annotations

import pytest

from kvscope.collectors.engines.discovery import targets_from_pods
from kvscope.config import Config
from kvscope.parsers.kube import Pod


def _pod(name: str, port: str, ip: str) -> Pod:
    return Pod(name=name, namespace="inference", labels={}, host_ipc=False, containers={},
               annotations={"kvscope.io/scrape": "true", "kvscope.io/port": port},
               node_name="node-a", phase="Running", pod_ip=ip)


@pytest.mark.parametrize("port", ["\u00b2", "\u0669\u0664\u0664\u0667", "\uff18\uff10", "+80",
                                  " 80", "65536", "0"])
def test_a_bad_port_annotation_refuses_that_pod_only(port: str) -> None:
    cfg = Config(node_name="node-a")
    found = targets_from_pods([_pod("good", "8000", "127.0.0.5"), _pod("bad", port, "127.0.0.6")],
                              cfg.collectors.engines, cfg.pd, "node-a")
    assert [t.url for t in found.targets] == ["http://127.0.0.5:8000/metrics"]
    assert found.refused == {"port": 1}
    assert found.refused_pods == (("inference/bad", "port"),)
