"""Property-based fuzz of `hamr serve` from its own OpenAPI description (hypothesis): requests
built from each operation's described body (the fields it names, values that fit their schema
or break it, unknown fields, wrong content types), sent to a real uvicorn server. Property: no
answer is 500 or above, every error is {"error": {"code", "message"}}, and the server stays
healthy.

Bounded for CI by HAMR_FUZZ_EXAMPLES (default 120 requests, about a minute on 2 cores); a longer
run: HAMR_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_service_fuzz.py.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_server import Server, start_server, stop_server

EXAMPLES = int(os.environ.get("HAMR_FUZZ_EXAMPLES", "120"))


@pytest.fixture(scope="module")
def fuzz_server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = dict(os.environ)
    root = tmp_path_factory.mktemp("xdg-fuzz")
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        (root / name).mkdir()
        env[name] = str(root / name)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("HAMR_TOKEN", None)
    allowed = tmp_path_factory.mktemp("fuzz-allowed")
    (allowed / "a.mp4").write_bytes(b"not a video")
    server = start_server(checkpoint, env, "--allow-path", str(allowed), "--detector", "hamr")
    server.allowed = allowed  # type: ignore[attr-defined]
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def spec(fuzz_server: Server) -> dict:
    return httpx.get(f"{fuzz_server.url}/openapi.json", timeout=30).json()


def small_image(colour: int, size: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (colour, 255 - colour, colour // 2)).save(buf, fmt)
    return buf.getvalue()


def junk_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.sampled_from(["nan", "inf", "-inf", "1e400", "1e-400", "-0", "", " ", "\x00", "0x1f"]),
        st.builds(lambda n: "9" * n, st.integers(1, 3000)),
    )


def value_for(schema: dict) -> st.SearchStrategy:
    """A text value that fits a field's schema (enum, number range, box pattern) or breaks it."""
    fitting: list[st.SearchStrategy] = []
    if "enum" in schema:
        fitting.append(st.sampled_from(schema["enum"]))
    if schema.get("type") == "number":
        lo, hi = schema.get("minimum", -1e9), schema.get("maximum", 1e9)
        fitting.append(st.floats(lo, hi).map(repr))
        fitting.append(st.floats(allow_nan=True, allow_infinity=True).map(repr))
    if schema.get("type") == "array" or "pattern" in schema:
        number = st.one_of(
            st.floats(-1e4, 1e4), st.floats(allow_nan=True), st.integers(-1e20, 1e20)
        )
        box = st.lists(number, min_size=3, max_size=5).map(lambda v: ",".join(map(str, v)))
        fitting.append(box)
        fitting.append(st.lists(box, min_size=1, max_size=12).map(";".join))
    return st.one_of(*fitting, junk_text()) if fitting else junk_text()


@st.composite
def requests(draw: st.DrawFn, spec: dict, allowed: Path) -> tuple[str, str, dict]:
    """(method, path, httpx keyword arguments) for one operation of the description."""
    operations = [
        (method.upper(), path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
    ]
    method, path, op = draw(st.sampled_from(operations))
    if "{job_id}" in path:
        path = path.replace("{job_id}", draw(st.text("0123456789abcdef", max_size=40)) or "x")
    body = op.get("requestBody", {}).get("content", {})
    if not body:
        params = {"side": draw(value_for({"enum": ["right", "left"]}))} if "model" in path else {}
        return method, path, {"params": params}
    media = draw(st.sampled_from(sorted(body)))
    properties = body[media]["schema"].get("properties", {})
    fields: dict[str, object] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for name, schema in properties.items():
        if not draw(st.booleans()):
            continue
        if schema.get("format") == "binary":
            image = st.builds(
                small_image,
                st.integers(0, 255),
                st.integers(1, 96),
                st.sampled_from(["PNG", "JPEG", "BMP", "GIF"]),
            )
            files[name] = ("f", draw(st.one_of(image, st.binary(max_size=2000))))
        elif name == "path":
            fields[name] = draw(
                st.one_of(
                    st.sampled_from([str(allowed / "a.mp4"), str(allowed), "/etc/passwd"]),
                    st.builds(lambda t: str(allowed / t), st.text(max_size=300)),
                    junk_text(),
                )
            )
        else:
            fields[name] = draw(value_for(schema))
    if draw(st.integers(0, 9)) == 0:  # an unknown field
        fields[draw(st.text(min_size=1, max_size=10))] = draw(junk_text())
    if media == "application/json":
        if draw(st.booleans()):
            # finite floats: JSON has no NaN or infinity, and httpx refuses to encode them
            # (a ValueError in the test itself, now and then, before this)
            finite = st.floats(allow_nan=False, allow_infinity=False)
            json_values = st.recursive(
                st.none() | st.booleans() | finite | st.text(max_size=20),
                lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner),
                max_leaves=20,
            )
            fields = {k: draw(st.one_of(st.just(v), json_values)) for k, v in fields.items()}
        return method, path, {"json": fields}
    if media == "application/x-www-form-urlencoded":
        return method, path, {"data": fields}
    if not files and draw(st.booleans()):
        return method, path, {"data": fields}  # a form with no file
    return method, path, {"data": fields, "files": files or None}


def test_fuzz_the_described_api(fuzz_server: Server, spec: dict) -> None:
    allowed = fuzz_server.allowed  # type: ignore[attr-defined]
    with httpx.Client(base_url=fuzz_server.url, timeout=120) as http:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(requests(spec, allowed))
        def check(request: tuple[str, str, dict]) -> None:
            method, path, kwargs = request
            response = http.request(method, path, **kwargs)
            assert response.status_code < 500, (request, response.text)
            if response.status_code >= 400:
                error = response.json()["error"]
                assert set(error) == {"code", "message"}, error
            if response.status_code == 202:  # a queued job: cancel it, keep the queue short
                http.delete(f"/v1/jobs/{response.json()['id']}")
            assert http.get("/v1/health").status_code == 200

        check()
