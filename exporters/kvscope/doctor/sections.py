"""Imports every doctor section so it registers itself, in report order."""

from kvscope.doctor import SECTIONS, engines, gpu, rdma, topology  # noqa: F401

# Report order: GPUs, RDMA, topology and pods (each registers itself on import), then the
# engines, whose findings refer to the sections above.
if engines.engines_section not in SECTIONS:
    SECTIONS.append(engines.engines_section)
