"""The simulator's parts are listed in `kvscope.sim.catalogue`, not registered at import.

Before the catalogue, each subsystem module appended its equipment, starter and scenarios to
shared lists when imported, so what a scenario's node held and the order of `kvscope scenarios`
depended on which module a caller imported first.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kvscope
from kvscope.sim import catalogue, engines, incidents, mig, rdma, scenarios, topology

SIM = Path(catalogue.__file__).parent
# Methods that grow a shared registry; none may run while a sim module is imported.
GROWING = {"append", "extend", "insert", "update", "add", "setdefault", "register"}

# Print what the simulator is made of, after importing only the module named in argv[1].
PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
import kvscope.sim
from kvscope.sim import catalogue
from kvscope.sim.scenarios import all_scenarios
def name(f):
    return f.__module__ + "." + f.__name__
print(json.dumps({"package": list(kvscope.sim.SCENARIOS), "all": list(all_scenarios()),
                  "equipment": [name(f) for f in catalogue.EQUIPMENT],
                  "starters": [name(f) for f in catalogue.STARTERS]}))
"""


def _made_of_after_importing(module: str) -> dict[str, list[str]]:
    exporters = str(Path(kvscope.__file__).parent.parent)
    env = dict(os.environ, PYTHONPATH=exporters)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, list[str]] = json.loads(out.stdout)
    return result


def test_the_scenario_list_is_every_subsystems_tuple_in_order() -> None:
    listed = (
        *scenarios.SCENARIOS,
        *topology.SCENARIOS,
        *rdma.SCENARIOS,
        *engines.SCENARIOS,
        *incidents.SCENARIOS,
        *mig.SCENARIOS,
    )
    assert list(catalogue.SCENARIOS.values()) == list(listed)  # also: no name given twice
    assert list(catalogue.SCENARIOS)[:2] == ["healthy", "gpu0-hotspot"]
    assert scenarios.all_scenarios() is catalogue.SCENARIOS


@pytest.mark.parametrize(
    "first", ["kvscope.sim.scenarios", "kvscope.sim.engines", "kvscope.sim.mig", "kvscope.sim.rdma"]
)
def test_the_simulator_is_the_same_whichever_module_is_imported_first(first: str) -> None:
    made_of = _made_of_after_importing(first)
    full = list(catalogue.SCENARIOS)
    assert made_of["package"] == full
    assert made_of["all"] == full
    assert made_of["equipment"] == [
        "kvscope.sim.pods.equip_pd_pods",
        "kvscope.sim.topology.equip_topology",
        "kvscope.sim.rdma.equip_rdma",
        "kvscope.sim.engines.equip_engines",
    ]
    assert made_of["starters"] == [
        "kvscope.sim.services.start_kube_api",
        "kvscope.sim.topology.start_sysfs",
        "kvscope.sim.kubelet.start_kubelet",
        "kvscope.sim.rdma.start_rdma",
        "kvscope.sim.engines.start_engines",
        "kvscope.sim.procfs.start_procfs",
    ]


def _import_time_calls(tree: ast.Module) -> list[tuple[ast.Call, bool]]:
    """Calls a module makes while it is imported (not those inside functions or classes), each
    with whether its value is thrown away (a call made only for what it does)."""
    calls: list[tuple[ast.Call, bool]] = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(node, ast.Call):
            calls.append((node, False))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            calls.append((node.value, True))
            node = node.value
        stack.extend(ast.iter_child_nodes(node))
    return sorted(calls, key=lambda c: c[0].lineno)


def _registrations(source: str) -> list[str]:
    found: list[str] = []
    for call, discarded in _import_time_calls(ast.parse(source)):
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in GROWING or discarded:
            found.append(f"line {call.lineno}: {ast.unparse(call)[:60]}")
    found += [
        f"line {n}: an import kept only for its side effects"
        for n, line in enumerate(source.splitlines(), 1)
        if "noqa: F401" in line
    ]
    return found


@pytest.mark.parametrize("path", sorted(SIM.glob("*.py")), ids=lambda p: p.name)
def test_no_sim_module_registers_anything_at_import(path: Path) -> None:
    assert _registrations(path.read_text()) == []


def test_the_registration_check_sees_the_old_patterns() -> None:
    old = (
        "from kvscope.sim import pods as _pods  # noqa: F401\n"
        "DEFAULT_EQUIPMENT.append(equip)\n"
        "for _s in (a, b):\n    register(_s)\n"
        "def _register_services() -> None:\n    STARTERS.append(start)\n"
        "_register_services()\n"
    )
    assert [f.split(":")[0] for f in _registrations(old)] == [
        "line 2",
        "line 4",
        "line 7",
        "line 1",
    ]


def test_every_equipment_function_of_the_simulator_is_listed() -> None:
    for path in SIM.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("equip_"):
                assert node.name in {f.__name__ for f in catalogue.EQUIPMENT}, path.name
