"""The local HTTP service (`hamr serve`): `app` (endpoints, model state), `forms` (request bodies
-> options), `jobs` (the video queue), `guard` (token, upload cap, error shape). The only package
in the backend that imports FastAPI or Starlette; only the CLI imports it."""

from .app import create_app
from .guard import check_bind

__all__ = ["check_bind", "create_app"]
