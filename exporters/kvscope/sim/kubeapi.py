"""A fake Kubernetes API server serving the simulated node's pods and node object.

Real HTTP on loopback, same JSON shapes as the API server (PodList, Node), so the production
`KubeClient` is what talks to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from kvscope.sim.node import SimNode, SimPod

NODE_KEY = web.AppKey("node", SimNode)

# Adds a subsystem's routes (e.g. Volcano HyperNodes) to the fake API.
ApiExtension = Callable[[web.Application, SimNode], None]


def pod_object(pod: SimPod, node_name: str) -> dict[str, Any]:
    env = [{"name": k, "value": v} for k, v in pod.env.items()]
    limits = {"nvidia.com/gpu": str(len(pod.gpus))} if pod.gpus else {}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace,
                     "uid": pod.uid or f"uid-{pod.namespace}-{pod.name}",
                     "labels": dict(pod.labels), "annotations": dict(pod.annotations)},
        "spec": {"nodeName": node_name, "hostIPC": pod.host_ipc,
                 "containers": [{"name": pod.container, "env": env,
                                 "securityContext": {"privileged": pod.privileged},
                                 "resources": {"limits": limits}}]},
        "status": {"phase": "Running", "podIP": pod.pod_ip},
    }


async def _pods(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    selector = request.query.get("fieldSelector", "")
    wanted = selector.removeprefix("spec.nodeName=") if selector else node.hostname
    items = [pod_object(p, node.hostname) for p in node.pods] if wanted == node.hostname else []
    return web.json_response({"apiVersion": "v1", "kind": "PodList", "items": items})


async def _node(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    if request.match_info["name"] != node.hostname:
        return web.json_response({"kind": "Status", "code": 404}, status=404)
    return web.json_response({"apiVersion": "v1", "kind": "Node",
                              "metadata": {"name": node.hostname,
                                           "labels": dict(node.node_labels)}})


def build_app(node: SimNode) -> web.Application:
    """The fake API, with the routes of the catalogue's API extensions."""
    from kvscope.sim.catalogue import API_EXTENSIONS

    app = web.Application()
    app[NODE_KEY] = node
    app.router.add_get("/api/v1/pods", _pods)
    app.router.add_get("/api/v1/nodes/{name}", _node)
    for extend in API_EXTENSIONS:
        extend(app, node)
    return app
