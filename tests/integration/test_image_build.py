"""The container image, built for real with buildah from helm/image/Containerfile and run.

The base is made on this machine by debootstrap (helm/image/build.sh --local-base) because CI
reaches no container registry; it is kept in buildah's storage, so a second run on the same
machine builds only the kvscope layer. A clean machine needs about a minute for both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TAG = "localhost/kvscope:pytest"
NOBODY = "65534"
BUILDAH_ENV = {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}


def _buildah(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout,
                          env=BUILDAH_ENV, check=False)


def _version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (tests/setup.d/buildah.sh installs it)")
    build = subprocess.run(["bash", "helm/image/build.sh", "--local-base", "--tag", TAG],
                           cwd=REPO, capture_output=True, text=True, timeout=540,
                           env=BUILDAH_ENV, check=False)
    assert build.returncode == 0, f"image build failed:\n{build.stdout}\n{build.stderr}"
    listed = _buildah("images", "--format", "{{.Size}}", TAG)
    print(f"\nimage {TAG}: {listed.stdout.strip()} (uncompressed, buildah images)")
    yield TAG
    _buildah("rmi", TAG)


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    made = _buildah("from", "--quiet", image)
    assert made.returncode == 0, made.stderr
    name = made.stdout.strip()
    yield name
    _buildah("rm", name)


def _run(container: str, *command: str, user: str | None = NOBODY
         ) -> subprocess.CompletedProcess[str]:
    args = ["run"]
    if user is not None:
        args += ["--user", f"{user}:{user}"]
    return _buildah(*args, container, "--", *command)


def _config(image: str) -> dict[str, Any]:
    inspected = _buildah("inspect", "--type", "image", image)
    assert inspected.returncode == 0, inspected.stderr
    config: dict[str, Any] = json.loads(inspected.stdout)["OCIv1"]["config"]
    return config


def test_image_runs_as_nobody_with_kvscope_serve_as_default(image: str) -> None:
    config = _config(image)
    assert config["User"] == f"{NOBODY}:{NOBODY}"
    assert config["Entrypoint"] == ["kvscope"]
    assert config["Cmd"] == ["serve"]
    assert "9447/tcp" in config["ExposedPorts"]


def test_image_carries_oci_labels(image: str) -> None:
    labels = _config(image)["Labels"]
    assert labels["org.opencontainers.image.version"] == _version()
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.title"] == "kvscope"
    assert re.fullmatch(r"[0-9a-f]{12}|unknown", labels["org.opencontainers.image.revision"])
    assert "org.opencontainers.image.source" in labels


def test_default_user_is_not_root(container: str) -> None:
    result = _run(container, "id", "-u", user=None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == NOBODY


def test_kvscope_version_in_the_image(container: str) -> None:
    result = _run(container, "kvscope", "version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"kvscope {_version()}"


def test_collect_on_the_simulated_node_prints_eight_gpus(container: str) -> None:
    result = _run(container, "kvscope", "collect", "--scenario", "healthy")
    assert result.returncode == 0, result.stderr
    gpus = set(re.findall(r'^DCGM_FI_DEV_GPU_TEMP\{[^}]*\bgpu="(\d+)"', result.stdout, re.M))
    assert gpus == {str(i) for i in range(8)}
    assert 'kvscope_collector_up{collector="gpu",tier="fast"} 1.0' in result.stdout


def test_collect_without_a_gpu_driver_reports_no_nvml(container: str) -> None:
    # The real hardware path inside the image: no libnvidia-ml here, so "no GPU hardware", and
    # every collector still answers.
    result = _run(container, "kvscope", "collect")
    assert result.returncode == 0, result.stderr
    assert "kvscope_gpu_nvml_available 0.0" in result.stdout
    assert 'kvscope_collector_up{collector="self",tier="fast"} 1.0' in result.stdout


def test_image_ships_no_pip(container: str) -> None:
    # Nothing installs at run time; pip would only be one more tool for an intruder.
    in_venv = _run(container, "/opt/kvscope/bin/python", "-c", "import pip")
    assert in_venv.returncode != 0, "pip is still in the kvscope venv"
    assert "ModuleNotFoundError" in in_venv.stderr


def test_image_has_pyverbs_for_rdma_device_limits(container: str) -> None:
    # The wheel bundles libibverbs, so the import needs nothing from the base image; without
    # RDMA devices the verbs source reports "no hardware".
    result = _run(container, "/opt/kvscope/bin/python", "-c", "import pyverbs.device")
    assert result.returncode == 0, result.stderr
