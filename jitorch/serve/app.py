"""The HTTP application: the KServe v2 inference protocol, TorchServe's `/predictions`, health,
metadata and Prometheus metrics, on Starlette.

- `GET /v2/health/live`, `GET /v2/health/ready` (503 while the server shuts down), `GET /v2`
- `GET /v2/models/{name}[/versions/{version}]`: the model's metadata (a dynamic dim's size is -1);
  `.../ready`
- `POST /v2/models/{name}[/versions/{version}]/infer`: `{"id": ..., "inputs": [{"name", "shape",
  "datatype", "data"}], "outputs": [{"name"}]}` (data flat, row-major, or nested), answered
  `{"model_name", "model_version", "id", "outputs": [{"name", "shape", "datatype", "data"}]}`
- `POST /predictions/{name}[/{version}]`: TorchServe's path, for a model of one input and one output:
  the body is that input as a JSON array (or `{"data": array}`), one or more rows; the answer is the
  output as a JSON array
- `GET /metrics`: requests, errors, latency and batch sizes in Prometheus' text format

A request the model cannot take gets a 4xx whose message names the expected input; nothing a client
sends stops the server (an unexpected failure is a 500 for that request only).
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import dtypes
from .batching import RequestError, ServedModel
from .metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Metrics

# KServe v2 datatypes <-> jitorch dtype names
DATATYPES = {"BOOL": "bool", "UINT8": "uint8", "INT8": "int8", "INT16": "int16", "INT32": "int32",
             "INT64": "int64", "FP16": "float16", "BF16": "bfloat16", "FP32": "float32", "FP64": "float64"}
_KSERVE = {name: code for code, name in DATATYPES.items()}
MAX_BODY_BYTES = 64 * 1024 * 1024


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def make_app(models: list[ServedModel], max_body_bytes: int = MAX_BODY_BYTES, warm_up: bool = True) -> Starlette:
    """The application serving `models` (each name's versions; the highest version where none is named);
    with `warm_up`, each model runs every batch size once before the server reports ready."""
    by_name: dict[str, dict[str, ServedModel]] = {}
    for m in models:
        by_name.setdefault(m.name, {})[m.version] = m
    metrics = Metrics()
    metrics.counter("jitorch_requests_total", "Inference requests, by model, version, protocol and status code.")
    metrics.counter("jitorch_request_errors_total", "Inference requests answered with an error, by status code.")
    metrics.histogram("jitorch_request_latency_seconds", "Time from a request's arrival to its answer.",
                      LATENCY_BUCKETS)
    metrics.histogram("jitorch_batch_size", "Rows per call of a model (requests batched together).", BATCH_BUCKETS)
    state = {"ready": False}
    for m in models:
        m.on_batch = (lambda rows, m=m: metrics.observe("jitorch_batch_size",
                                                        {"model": m.name, "version": m.version}, rows))

    def find(name: str, version: str | None) -> ServedModel:
        versions = by_name.get(name)
        if not versions:
            raise _HttpError(404, f"no model named {name!r}; this server has {sorted(by_name)}")
        if version is None:
            return versions[max(versions, key=_version_order)]
        if version not in versions:
            raise _HttpError(404, f"model {name!r} has no version {version!r}; it has {sorted(versions)}")
        return versions[version]

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    async def server_metadata(request: Request) -> Response:
        from .. import __version__

        return JSONResponse({"name": "jitorch", "version": __version__, "extensions": []})

    async def model_metadata(request: Request) -> Response:
        m = find(request.path_params["name"], request.path_params.get("version"))
        return JSONResponse({"name": m.name, "versions": sorted(by_name[m.name], key=_version_order),
                             "platform": "jitorch", "inputs": [_tensor_metadata(s) for s in m.runner.input_specs],
                             "outputs": [_tensor_metadata(s) for s in m.runner.output_specs]})

    async def model_ready(request: Request) -> Response:
        m = find(request.path_params["name"], request.path_params.get("version"))
        return JSONResponse({"name": m.name, "ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    async def infer(request: Request) -> Response:
        m = request.state.model = find(request.path_params["name"], request.path_params.get("version"))
        body = await _json_body(request, max_body_bytes)
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise _HttpError(400, f"expected a JSON object with \"inputs\": [{_expected(m)}]")
        arrays = _kserve_inputs(m, body["inputs"])
        outputs = await m.infer(arrays)
        wanted = _wanted_outputs(m, body.get("outputs"))
        answer = {"model_name": m.name, "model_version": m.version,
                  "outputs": [{"name": spec.name, "shape": list(o.shape), "datatype": _KSERVE[spec.dtype],
                               "data": _flat(o)}
                              for spec, o in zip(m.runner.output_specs, outputs) if spec.name in wanted]}
        if "id" in body:
            answer["id"] = body["id"]
        return JSONResponse(answer)

    async def predictions(request: Request) -> Response:
        m = request.state.model = find(request.path_params["name"], request.path_params.get("version"))
        if len(m.runner.input_specs) != 1 or len(m.runner.output_specs) != 1:
            raise _HttpError(400, f"/predictions serves models of one input and one output; {m.name} has "
                                  f"{_expected(m)}: use /v2/models/{m.name}/infer")
        body = await _json_body(request, max_body_bytes)
        data = body.get("data") if isinstance(body, dict) else body
        spec = m.runner.input_specs[0]
        array = _array(data, spec, None)
        if m.batchable and array.ndim == len(spec.shape) - 1:
            array = array[None]  # (one row without its batch dim)
        (output,) = await m.infer([array])
        return JSONResponse(output.tolist())

    async def metrics_page(request: Request) -> Response:
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    def counted(handler, protocol: str):
        async def run(request: Request) -> Response:
            started = time.perf_counter()
            labels = {"model": request.path_params.get("name", ""), "protocol": protocol}
            try:
                response = await handler(request)
            except _HttpError as err:
                response = JSONResponse({"error": str(err)}, status_code=err.status)
            except RequestError as err:
                response = JSONResponse({"error": str(err)}, status_code=400)
            except Exception as err:  # (this request fails; the server goes on)
                response = JSONResponse({"error": f"{type(err).__name__}: {err}"}, status_code=500)
            served = getattr(request.state, "model", None)  # (set once the request named a model this server has)
            labels["version"] = served.version if served is not None else ""
            metrics.inc("jitorch_requests_total", {**labels, "code": str(response.status_code)})
            if response.status_code >= 400:
                metrics.inc("jitorch_request_errors_total", {**labels, "code": str(response.status_code)})
            metrics.observe("jitorch_request_latency_seconds", labels, time.perf_counter() - started)
            return response
        return run

    def plain(handler):
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except _HttpError as err:
                return JSONResponse({"error": str(err)}, status_code=err.status)
        return run

    @asynccontextmanager
    async def lifespan(app):
        if warm_up:
            loop = asyncio.get_running_loop()
            for m in models:
                await loop.run_in_executor(None, m.warm_up)
        state["ready"] = True
        yield
        state["ready"] = False  # (uvicorn has stopped taking connections and let the open ones finish)
        for m in models:
            await m.close()

    infer_route, predictions_route = counted(infer, "kserve"), counted(predictions, "torchserve")
    routes = [
        Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server_metadata),
        Route("/v2/models/{name}", plain(model_metadata)),
        Route("/v2/models/{name}/versions/{version}", plain(model_metadata)),
        Route("/v2/models/{name}/ready", plain(model_ready)),
        Route("/v2/models/{name}/versions/{version}/ready", plain(model_ready)),
        Route("/v2/models/{name}/infer", infer_route, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer_route, methods=["POST"]),
        Route("/predictions/{name}", predictions_route, methods=["POST"]),
        Route("/predictions/{name}/{version}", predictions_route, methods=["POST"]),
        Route("/ping", live), Route("/metrics", metrics_page),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _version_order(version: str):
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def _tensor_metadata(spec) -> dict:
    return {"name": spec.name, "datatype": _KSERVE[spec.dtype],
            "shape": [-1 if isinstance(d, str) else d for d in spec.shape]}


def _expected(m: ServedModel) -> str:
    return ", ".join(f"{{\"name\": \"{s.name}\", \"datatype\": \"{_KSERVE[s.dtype]}\", \"shape\": "
                     f"[{', '.join('-1' if isinstance(d, str) else str(d) for d in s.shape)}]}}"
                     for s in m.runner.input_specs)


async def _json_body(request: Request, limit: int):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _HttpError(413, f"request body of {declared} bytes; this server takes at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _HttpError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _HttpError(400, f"the body is not valid JSON: {err}") from None


def _kserve_inputs(m: ServedModel, inputs: list) -> list[np.ndarray]:
    given = {}
    for entry in inputs:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise _HttpError(400, f"each input is an object with name, shape, datatype and data; expected "
                                  f"[{_expected(m)}]")
        given[entry["name"]] = entry
    arrays = []
    for spec in m.runner.input_specs:
        entry = given.pop(spec.name, None)
        if entry is None:
            raise _HttpError(400, f"missing input {spec.name!r}; expected [{_expected(m)}]")
        if entry.get("datatype") != _KSERVE[spec.dtype]:
            raise _HttpError(400, f"input {spec.name}: datatype {entry.get('datatype')!r}, expected "
                                  f"{_KSERVE[spec.dtype]!r}")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise _HttpError(400, f"input {spec.name}: shape must be a list of sizes, got {shape!r}")
        arrays.append(_array(entry.get("data"), spec, shape))
    if given:
        raise _HttpError(400, f"unknown inputs {sorted(given)}; expected [{_expected(m)}]")
    return arrays


def _array(data, spec, shape: list[int] | None) -> np.ndarray:
    """The request's data for input `spec` as an array of its dtype (and of `shape` where given)."""
    dtype = dtypes.get_dtype(spec.dtype).np
    try:
        array = np.asarray(data, dtype=dtype if spec.dtype != "bool" else None)
        if spec.dtype == "bool" and array.dtype != np.bool_:
            raise TypeError("booleans expected")
        if array.dtype == object:
            raise TypeError("ragged or non-numeric data")
        if shape is not None:
            array = array.reshape(shape)
    except (TypeError, ValueError) as err:
        raise _HttpError(400, f"input {spec.name}: data does not make a {spec.dtype} array"
                              f"{'' if shape is None else f' of shape {shape}'} ({err})") from None
    return array.astype(dtype, copy=False)


def _flat(array: np.ndarray) -> list:
    return (array.astype(np.float32) if array.dtype.name == "bfloat16" else array).reshape(-1).tolist()


def _wanted_outputs(m: ServedModel, outputs) -> set[str]:
    names = {s.name for s in m.runner.output_specs}
    if outputs is None:
        return names
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise _HttpError(400, "\"outputs\" is a list of {\"name\": ...}")
    wanted = {o["name"] for o in outputs}
    if wanted - names:
        raise _HttpError(400, f"unknown outputs {sorted(wanted - names)}; the model has {sorted(names)}")
    return wanted
