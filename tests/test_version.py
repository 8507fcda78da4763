"""One version for the project: the Python package (pyproject.toml), the backend
(`backend.__version__`, which `GET /v1/health` reports), the Blender extension's manifest, and the
newest release heading of CHANGELOG.md agree."""

from __future__ import annotations

import re
import time
from pathlib import Path

import tomllib
from fastapi.testclient import TestClient

import backend
from backend.service import create_app

ROOT = Path(__file__).resolve().parents[1]


def test_package_manifest_backend_and_changelog_agree() -> None:
    package = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    manifest = tomllib.loads((ROOT / "blender_manifest.toml").read_text())["version"]
    releases = re.findall(r"^## \[?(\d+\.\d+\.\d+)\]?", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert package == manifest == backend.__version__ == releases[0]


def test_health_reports_the_version(checkpoint) -> None:
    with TestClient(create_app(checkpoint), base_url="http://127.0.0.1") as client:
        for _ in range(600):  # the model loads in the background
            response = client.get("/v1/health")
            if response.status_code == 200:
                break
            time.sleep(0.1)
        assert response.status_code == 200
        assert response.json()["version"] == backend.__version__
