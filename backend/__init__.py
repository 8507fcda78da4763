"""The HAMR backend: inference (hand model, network, detection, fusion, video), the HTTP service
and the `hamr` command. `__version__` is the project's one version: pyproject.toml, the Blender
extension's manifest and `GET /v1/health` agree with it (tests/test_version.py)."""

__version__ = "0.1.0"
