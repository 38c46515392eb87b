"""Everything the simulated node is made of, listed in one place and in order.

The subsystem simulators only define their parts (an equipment function, a service starter, a
tuple of scenarios); none registers itself at import. So the node every scenario starts from, the
fakes started for it and the scenario list are the same whichever modules a caller (a test, a
benchmark, the cli) happened to import first.
"""

from __future__ import annotations

from kvscope.sim import (
    engines,
    incidents,
    kubelet,
    mig,
    pods,
    procfs,
    rdma,
    scenarios,
    services,
    topology,
)
from kvscope.sim.kubeapi import ApiExtension
from kvscope.sim.scenarios import Equipment, Scenario
from kvscope.sim.services import Starter

# Applied in this order to every scenario's node (`scenarios._node`): the PD pods first, since
# the engines are placed in them.
EQUIPMENT: tuple[Equipment, ...] = (
    pods.equip_pd_pods,
    topology.equip_topology,
    rdma.equip_rdma,
    engines.equip_engines,
)

# Started in this order; `services.SERVES` says which collectors each one serves.
STARTERS: tuple[Starter, ...] = (
    services.start_kube_api,
    topology.start_sysfs,
    kubelet.start_kubelet,
    rdma.start_rdma,
    engines.start_engines,
    procfs.start_procfs,
)

# Routes added to the fake Kubernetes API (`kubeapi.build_app`).
API_EXTENSIONS: tuple[ApiExtension, ...] = (topology.add_hypernodes,)

# By name, in the order `kvscope scenarios` lists them.
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        *scenarios.SCENARIOS,
        *topology.SCENARIOS,
        *rdma.SCENARIOS,
        *engines.SCENARIOS,
        *incidents.SCENARIOS,
        *mig.SCENARIOS,
    )
}
