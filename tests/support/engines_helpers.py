"""Shared helpers for the engine collector tests: fixture texts, expected values, servers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "engines"
P = "kvscope_engine_"


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text()


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.txt"))


# fixture -> (engine, role, model, [(family, extra labels, value)], [families that must be absent])
# Values come from the samples in the reference (§12), converted to base units where noted.
Expect = tuple[str, str, str, list[tuple[str, dict[str, str], float]], list[str]]
EXPECTED: dict[str, Expect] = {
    "vllm_v1_scrape": ("vllm", "both", "qwen3.8-27b-local", [
        ("kv_cache_usage_ratio", {}, 0.0),
        ("prefix_cache_query_tokens_total", {}, 6.4929219e7),
        ("prefix_cache_hit_tokens_total", {}, 4.40416e7),
        ("requests_running", {}, 0.0), ("requests_waiting", {}, 0.0),
        ("pd_queue_requests", {"stage": "deferred"}, 0.0),
        ("preemptions_total", {}, 0.0)], ["prefix_cache_hit_ratio"]),
    "vllm_v1_docs": ("vllm", "both", "meta-llama/Llama-3.1-8B-Instruct", [
        ("requests_running", {}, 8.0), ("generation_tokens_total", {}, 27453.0),
        ("requests_total", {"outcome": "success"}, 132.0),
        ("requests_total", {"outcome": "aborted"}, 0.0),
        ("time_to_first_token_seconds_bucket", {"le": "0.04"}, 97.0),
        ("time_to_first_token_seconds_bucket", {"le": "+Inf"}, 140.0),
        ("time_to_first_token_seconds_count", {}, 140.0)], ["kv_cache_usage_ratio"]),
    "vllm_v1_nixl_decode": ("vllm", "both", "m", [
        ("kv_transfer_bytes_total", {}, 1.6777216e9),
        ("kv_transfer_seconds_total", {}, 1.35),
        ("kv_transfer_failures_total", {"kind": "transfer"}, 0.0),
        ("kv_transfer_failures_total", {"kind": "notification"}, 0.0)],
        ["prefix_cache_hit_tokens_total"]),
    "vllm_v1_0_8_blocks": ("vllm", "both", "m", [
        ("kv_cache_usage_ratio", {}, 0.5),
        ("prefix_cache_query_tokens_total", {}, 16000.0),  # 1000 blocks x block_size 16
        ("prefix_cache_hit_tokens_total", {}, 4000.0)], []),
    "vllm_v0": ("vllm", "both", "m", [
        ("kv_cache_usage_ratio", {}, 0.41), ("requests_running", {}, 3.0),
        ("requests_waiting", {}, 0.0), ("preemptions_total", {}, 0.0),
        ("prefix_cache_hit_ratio", {"window": "recent"}, 0.62)],
        ["prefix_cache_hit_tokens_total", "inter_token_latency_seconds_count"]),
    "sglang_docs_old": ("sglang", "both", "meta-llama/Llama-3.1-8B-Instruct", [
        ("kv_cache_usage_ratio", {}, 0.28), ("requests_running", {}, 162.0),
        ("requests_waiting", {}, 2826.0), ("prompt_tokens_total", {}, 8128902.0),
        ("generation_tokens_total", {}, 7557572.0),
        ("prefix_cache_hit_ratio", {"window": "last_batch"}, 0.007507552643049313),
        ("time_to_first_token_seconds_bucket", {"le": "30.0"}, 2513.0),
        ("time_to_first_token_seconds_sum", {}, 2.3518979474117756e6)],
        ["prefix_cache_hit_tokens_total"]),
    "sglang_pd_prefill_histogram": ("sglang", "prefill", "glm", [
        ("requests_running", {}, 0.0), ("requests_waiting", {}, 1.0),
        ("pd_queue_requests", {"stage": "bootstrap"}, 2.0),
        ("pd_queue_requests", {"stage": "inflight"}, 4.0),
        ("kv_transfer_seconds_total", {}, 0.64),  # 640 ms
        # the speed histogram: sum in GiB/s x 2^30, counts unchanged (bounds: test_normalize)
        ("kv_transfer_speed_bytes_per_second_count", {}, 50.0),
        ("kv_transfer_speed_bytes_per_second_sum", {}, 412.5 * 2 ** 30),
        ("kv_transfer_failures_total", {"kind": "transfer"}, 0.0)],
        ["kv_transfer_last_seconds", "kv_transfer_bytes_total"]),
    "sglang_pd_prefill_gauge": ("sglang", "prefill", "glm", [
        ("pd_queue_requests", {"stage": "bootstrap"}, 2.0),  # older prealloc name
        ("kv_transfer_last_seconds", {}, 0.0124),
        # SGLang's GB/s is GiB/s: 8.7 x 2^30 B/s.
        ("kv_transfer_last_bytes_per_second", {}, 8.7 * 2 ** 30)], ["kv_transfer_seconds_total"]),
    "sglang_decode_priority": ("sglang", "decode", "m", [
        ("requests_running", {}, 14.0),  # priority="" only, not 28
        ("requests_waiting", {}, 2.0),
        ("pd_queue_requests", {"stage": "prealloc"}, 3.0),
        ("pd_queue_requests", {"stage": "transfer"}, 1.0)], []),
    # Priority scheduling, 2026 names: queue gauges read their priority="" total (not 28 from
    # adding the parts), tokenizer series have no total and every priority is summed (only the
    # priority="" part would be 40% of the prompt tokens and 26 of 65 TTFT observations <= 0.6).
    "sglang_decode_priority_2026": ("sglang", "decode", "m", [
        ("requests_running", {}, 14.0), ("requests_waiting", {}, 6.0),
        ("pd_queue_requests", {"stage": "prealloc"}, 3.0),
        ("pd_queue_requests", {"stage": "transfer"}, 1.0),
        ("pd_queue_requests", {"stage": "host_receive"}, 2.0),
        ("kv_cache_capacity_tokens", {}, 720000.0),
        ("prompt_tokens_total", {}, 100000.0), ("generation_tokens_total", {}, 10000.0),
        ("requests_total", {"outcome": "success"}, 96.0),
        ("requests_total", {"outcome": "aborted"}, 4.0),
        ("time_to_first_token_seconds_bucket", {"le": "0.6"}, 65.0),
        ("time_to_first_token_seconds_count", {}, 100.0),
        ("time_to_first_token_seconds_sum", {}, 50.0),
        ("e2e_request_latency_seconds_count", {}, 100.0)], []),
    # kv_transfer_total_mb is MiB upstream: 1600 MiB = 1600 x 2^20 bytes.
    "sglang_pd_prefill_mib": ("sglang", "prefill", "glm", [
        ("kv_transfer_bytes_total", {}, 1600 * 2 ** 20),
        ("kv_transfer_seconds_total", {}, 0.2)], ["kv_transfer_last_seconds"]),
    "vllm_v1_mooncake_store": ("vllm", "both", "m", [
        ("external_prefix_cache_query_tokens_total", {}, 206000.0),
        ("external_prefix_cache_hit_tokens_total", {}, 204800.0),
        ("kv_store_io_bytes_total", {"direction": "read"}, 4.194304e9),
        ("kv_store_io_bytes_total", {"direction": "write"}, 6.291456e9),
        ("kv_store_io_seconds_total", {"direction": "read"}, 0.8),  # save_exists left out
        ("kv_store_io_seconds_total", {"direction": "write"}, 1.5),
        ("kv_transfer_failures_total", {"kind": "store_read"}, 2.0)],
        ["prefix_cache_hit_tokens_total", "kv_transfer_bytes_total"]),
    "lmcache_remote": ("lmcache", "both", "llama", [
        ("external_prefix_cache_query_tokens_total", {}, 900000.0),
        ("external_prefix_cache_hit_tokens_total", {}, 540000.0),
        ("kv_store_io_bytes_total", {"direction": "read"}, 3.2e10),  # worker_id repeats: max
        ("kv_store_io_bytes_total", {"direction": "write"}, 1.1e10)],
        ["prefix_cache_hit_tokens_total"]),
    "lmdeploy": ("lmdeploy", "both", "Qwen/Qwen2.5-7B-Instruct", [
        ("kv_cache_usage_ratio", {}, 0.37), ("requests_running", {}, 12.0),
        ("requests_waiting", {}, 3.0),
        ("prefix_cache_hit_ratio", {"window": "lifetime"}, 0.52),
        ("requests_total", {"outcome": "success"}, 230.0),
        ("requests_total", {"outcome": "aborted"}, 2.0),
        ("inter_token_latency_seconds_bucket", {"le": "0.01"}, 410.0),
        ("inter_token_latency_seconds_count", {}, 9000.0),
        ("inter_token_latency_seconds_sum", {}, 171.0)], ["preemptions_total"]),
    "tgi_ibm_fork": ("tgi", "both", "", [
        ("requests_running", {}, 0.0), ("requests_waiting", {}, 0.0)],
        ["kv_cache_usage_ratio"]),
    "tgi_router": ("tgi", "both", "", [
        ("requests_running", {}, 32.0), ("requests_waiting", {}, 4.0),
        ("requests_total", {"outcome": "success"}, 1031.0),
        ("requests_total", {"outcome": "error"}, 11.0),
        ("kv_cache_capacity_tokens", {}, 262144.0),  # the token budget, not a usage ratio
        ("batch_reserved_tokens", {}, 61440.0)],
        ["kv_cache_usage_ratio", "time_to_first_token_seconds_count",
         "prefix_cache_hit_tokens_total"]),
    "mooncake_tent": ("mooncake", "both", "", [
        ("kv_transfer_bytes_total", {}, 2097152.0),
        ("kv_transfer_failures_total", {"kind": "transfer"}, 2.0)], []),
    "mooncake_master": ("mooncake", "both", "", [
        ("kv_store_lookups_total", {}, 5120.0), ("kv_store_hits_total", {}, 4310.0),
        ("kv_store_used_bytes", {}, 98658304.0), ("kv_store_capacity_bytes", {}, 104857600.0)],
        ["kv_cache_usage_ratio"]),
    "lmcache": ("lmcache", "both", "llama", [
        ("prefix_cache_query_tokens_total", {}, 1.2e6),
        ("prefix_cache_hit_tokens_total", {}, 7.5e5)], ["prefix_cache_hit_ratio"]),
    "nixl": ("nixl", "both", "", [
        ("kv_transfer_bytes_total", {}, 4.294967296e10),
        ("kv_transfer_seconds_total", {}, 9.6),  # 9.6e6 us
        ("kv_transfer_failures_total", {"kind": "transfer"}, 0.0)], []),
    "dynamo": ("dynamo", "decode", "qwen/qwen3-32b", [
        ("kv_cache_usage_ratio", {}, 0.63), ("requests_waiting", {}, 3.0),
        ("requests_running", {}, 41.0),
        ("time_to_first_token_seconds_bucket", {"le": "0.5"}, 900.0),
        ("time_to_first_token_seconds_sum", {}, 312.4)], []),
}


def samples_of(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of an exposition, read with prometheus_client's own parser."""
    return [(s.name, dict(s.labels), s.value)
            for fam in text_string_to_metric_families(text) for s in fam.samples]


def find(samples: list[tuple[str, dict[str, str], float]], name: str,
         **labels: str) -> list[float]:
    return [v for n, lab, v in samples
            if n == name and all(lab.get(k) == want for k, want in labels.items())]


class ThreadedServer:
    """An aiohttp app on 127.0.0.1 in its own thread: for tests that call the sync CLI."""

    def __init__(self, app_factory: Callable[[], web.Application]) -> None:
        self._factory = app_factory
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self._factory(), access_log=None, handler_cancellation=True)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def fixture_app() -> web.Application:
    """Serves tests/fixtures/engines/<name>.txt at /<name>, plus misbehaving endpoints."""

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = FIXTURES / f"{name}.txt"
        if not path.is_file():
            return web.Response(status=404)
        return web.Response(text=path.read_text(), content_type="text/plain")

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(float(request.query.get("s", "30")))
        return web.Response(text="vllm:num_requests_running 1\n")

    async def garbage(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html><body>502 Bad Gateway</body></html>\n",
                            content_type="text/html")

    async def reset(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        line = b'vllm:num_requests_running{engine="0",model_name="m"} 1.0\n' * 1000
        for _ in range(2000):  # about 56 MB if nobody stops reading
            await resp.write(line)
        return resp

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/garbage", garbage)
    app.router.add_get("/reset", reset)
    app.router.add_get("/huge", huge)
    app.router.add_get("/{name}", serve)
    return app


def iter_expected() -> Iterator[tuple[str, Expect]]:
    yield from sorted(EXPECTED.items())
