"""The `kvscope` command. Flags follow node_exporter's conventions (`--web.listen-address`,
`--collector.<name>` / `--no-collector.<name>`); flags win over the config file."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kvscope import __version__
from kvscope.collectors.dcgm_compat import GENERATIONS
from kvscope.collectors.registry import CONFIGURABLE
from kvscope.config import WEEK_SECONDS, Config, ConfigError, load

if TYPE_CHECKING:
    from kvscope.context import NodeContext

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _common_options(fn: F) -> F:
    options = [
        click.option("--config", "config_file", type=click.Path(path_type=Path),
                     help="YAML configuration file."),
        click.option("--web.listen-address", "listen_address",
                     help="Address to listen on, [host]:port (default :9447)."),
        click.option("--web.config.file", "web_config_file", type=click.Path(path_type=Path),
                     help="exporter-toolkit web config: TLS and basic auth."),
        click.option("--web.probe-listen-address", "probe_listen_address",
                     help="Plain-HTTP [host]:port serving only /healthz and /readyz, without "
                          "auth, for Kubernetes probes (default: off)."),
        click.option("--web.enable-openmetrics", "enable_openmetrics", is_flag=True,
                     default=None, help="Serve OpenMetrics to scrapers that ask for it "
                     "(default: always the Prometheus text format, as dcgm-exporter)."),
        click.option("--dcgm.compat", "dcgm_compat", type=click.Choice(GENERATIONS),
                     help="dcgm-exporter release whose DCGM_* names, units and labels to "
                          "serve (default 4.8; see README, GPU metrics)."),
        click.option("--path.sysfs", "sysfs", type=click.Path(path_type=Path),
                     help="sysfs mount point (default /sys)."),
        click.option("--path.procfs", "procfs", type=click.Path(path_type=Path),
                     help="procfs mount point (default /proc)."),
        click.option("--scenario", help="Serve the simulated node in this scenario."),
        click.option("--collector.rdma.eadm-path", "rdma_eadm_path",
                     help="Alibaba eadm tool for eRDMA statistics (default: eadm on PATH)."),
        click.option("--log.level", "log_level",
                     type=click.Choice(["debug", "info", "warning", "error"])),
    ]
    for name in CONFIGURABLE:
        options.append(click.option(f"--collector.{name}/--no-collector.{name}",
                                    f"collector_{name}", default=None,
                                    help=f"Enable the {name} collector."))
    for option in reversed(options):
        fn = option(fn)
    return fn


def _overrides(kwargs: dict[str, Any]) -> dict[str, Any]:
    mapping = {"listen_address": "web.listen_address", "web_config_file": "web.config_file",
               "sysfs": "paths.sysfs", "procfs": "paths.procfs", "scenario": "scenario",
               "log_level": "log_level", "rdma_eadm_path": "collectors.rdma.eadm_path",
               "enable_openmetrics": "web.enable_openmetrics", "dcgm_compat": "dcgm.compat",
               "probe_listen_address": "web.probe_listen_address"}
    out = {dotted: kwargs[key] for key, dotted in mapping.items() if kwargs.get(key) is not None}
    for name in CONFIGURABLE:
        value = kwargs.get(f"collector_{name}")
        if value is not None:
            out[f"collectors.{name}.enabled"] = value
    return out


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()), stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r")


def _leave(code: int) -> None:
    # Reader threads are daemons (runtime.BlockingPool), so one stuck in a wedged driver call
    # cannot hold the exit.
    sys.exit(code)


def _fail(message: str) -> None:
    click.echo(f"kvscope: error: {message}", err=True)
    sys.exit(2)


def _run(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn configuration mistakes into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        try:
            config = load(kwargs.pop("config_file"), _overrides(kwargs))
            _setup_logging(config.log_level)
            fn(config, **{k: v for k, v in kwargs.items() if k in _extra_params(fn)})
        except ConfigError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _leave(130)
        _leave(0)

    return wrapper


def _extra_params(fn: Callable[..., Any]) -> set[str]:
    return set(fn.__code__.co_varnames[1:fn.__code__.co_argcount])


async def _with_node(config: Config, action: Callable[[NodeContext], Awaitable[T]], *,
                     oneshot: bool = False, fault_delay: float | None = None) -> T:
    """Build the Backends (the host's, or the simulated node's with its fake services running
    for as long as `action` runs), then run `action` on the agent's context."""
    from kvscope.backends import check_host_roots, host_backends
    from kvscope.context import NodeContext
    from kvscope.sources.nvml import call_detached

    async with AsyncExitStack() as stack:
        if config.scenario is None:
            check_host_roots(config)
            backends = host_backends(config)
        else:
            from kvscope.sim import build_backends

            delay = fault_delay if fault_delay is not None else (0.0 if oneshot else 30.0)
            backends, config = await build_backends(config, stack, fault_delay=delay)
        try:
            return await action(NodeContext(config, backends, oneshot=oneshot))
        finally:
            # The agent's one NVML session ends with it (on a daemon thread: a wedged driver
            # must not hold the exit).
            await call_detached(backends.nvml.close, 1.0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """kvscope: GPU, NVLink, RDMA and inference-engine metrics for PD-disaggregated serving."""


@main.command()
@_common_options
@_run
def serve(config: Config) -> None:
    """Serve /metrics for this node's hardware (or the simulated node with --scenario)."""
    from kvscope.app import serve as serve_forever

    asyncio.run(_with_node(config, serve_forever))



if TYPE_CHECKING:  # click 8.5 made ParamType generic; older releases are not subscriptable
    _FloatFlag = click.ParamType[float]
else:
    _FloatFlag = click.ParamType


class SecondsFlag(_FloatFlag):
    """Seconds on the command line, bounded as config.Seconds is: finite, at most a week, and
    above zero unless zero means "now" (a fault delay, a doctor window). float() alone takes
    `inf` and `nan`, which would make a wait endless or every comparison false."""

    name = "seconds"

    def __init__(self, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{str(value)[:40]!r} is not a number of seconds", param, ctx)
        low_ok = seconds >= 0 if self.allow_zero else seconds > 0
        if not (low_ok and seconds <= WEEK_SECONDS):  # also false for nan
            low = "0 or more" if self.allow_zero else "above 0"
            self.fail(f"{str(value)[:40]} seconds: must be finite, {low} and at most "
                      f"{WEEK_SECONDS} (a week)", param, ctx)
        return seconds

@main.command()
@_common_options
@click.option("--sim.fault-delay", "fault_delay", type=SecondsFlag(allow_zero=True),
              default=30.0, show_default=True,
              help="Seconds before the scenario's fault strikes.")
@_run
def demo(config: Config, fault_delay: float) -> None:
    """Serve the simulated node (default scenario: healthy). No GPU needed."""
    from kvscope.app import serve as serve_forever

    if config.scenario is None:
        config = config.model_copy(update={"scenario": "healthy"})
    asyncio.run(_with_node(config, serve_forever, fault_delay=fault_delay))


@main.command()
@_common_options
@_run
def collect(config: Config) -> None:
    """Poll every enabled collector once, print the exposition, exit 0 (failures show in _up)."""
    from kvscope.app import collect_once

    body = asyncio.run(_with_node(config, collect_once, oneshot=True))
    sys.stdout.write(body.decode())


@main.command()
@_common_options
@click.option("--url", help="Read a running agent's /metrics instead of this node "
              "(http://<host>:<port>[/metrics]); needs no privilege on that node.")
@click.option("--url.timeout", "url_timeout", type=SecondsFlag(), default=10.0, show_default=True,
              help="Seconds to wait for the agent at --url.")
@click.option("--window", type=SecondsFlag(allow_zero=True), default=0.0, show_default=True,
              help="Read twice, this many seconds apart, to judge rates (KV transfer speed, "
              "new failures) instead of totals since start.")
@_run
def doctor(config: Config, url: str | None, url_timeout: float, window: float) -> None:
    """Check this node (or a simulated one, or the agent at --url) and explain what is wrong.

    Exit 0: no critical finding; 1: a critical finding; 2: bad configuration or --url could
    not be read."""
    from kvscope import doctor as doctor_module

    if url is not None:
        from kvscope.doctor.remote import AgentUnreadable, metrics_url, read_agent

        if config.scenario is not None:
            _fail("--url reads another agent; --scenario does not apply to it (run the demo "
                  "with the scenario and point --url at it)")

        try:
            snap = asyncio.run(read_agent(metrics_url(url), config, url_timeout, window))
        except AgentUnreadable as exc:
            _fail(str(exc))
        report, code = asyncio.run(doctor_module.report(snap))
    else:
        async def local(ctx: NodeContext) -> tuple[str, int]:
            return await doctor_module.run(ctx, window)

        # The doctor's settings (every NVLink) apply before the simulated services start.
        report, code = asyncio.run(_with_node(doctor_module.doctor_config(config), local,
                                              oneshot=True))
    sys.stdout.write(report)
    _leave(code)


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"kvscope {__version__}")


@main.command()
def scenarios() -> None:
    """List the simulated node's scenarios."""
    from kvscope.sim.scenarios import all_scenarios

    for scenario in all_scenarios().values():
        click.echo(f"{scenario.name:<16} {scenario.description}")


if __name__ == "__main__":
    main()
