"""The local HTTP service (`hamr serve`): `app` (endpoints, model state), `photos` (one photo:
decode, predict, results in full-photo pixels), `forms` (request bodies -> options), `jobs` (the
video queue, allowed paths), `storage` (uploads and job records on disk), `guard` (origin, host,
token, upload cap, error shape), `protocol` (uvicorn's HTTP protocol with timeouts and JSON 400s),
`openapi` (the request bodies described). The only package in the backend that imports FastAPI
or Starlette; only the CLI imports it."""

from .app import create_app
from .guard import check_bind

__all__ = ["check_bind", "create_app"]
