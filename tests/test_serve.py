"""`jitorch.serve` on loopback: a server process serving exported programs, clients in threads.
Batching merges concurrent requests and routes each answer back; bad requests get 4xx naming the
expected input; health, metadata and metrics answer; a shutdown under load answers every request
in flight."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import jitorch as jt

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[1]


def _model():
    jt.manual_seed(0)
    return jt.nn.Sequential(jt.nn.Conv2d(1, 4, 3, padding=1), jt.nn.ReLU(), jt.nn.Flatten(), jt.nn.Linear(256, 10))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(the directory of a digits-sized CNN exported with a dynamic batch, the model in eval mode)."""
    model = _model()
    path = tmp_path_factory.mktemp("models") / "cnn.jtexport"
    jt.export.save(jt.export.export(model, (jt.randn(4, 1, 8, 8),), dynamic_shapes=({0: "batch"},)), path)
    model.eval()
    return path, model


class Server:
    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-m", "jitorch.serve", *args, "--port", "0"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert "http://" in line, line + self.proc.stderr.read()
        self.url = line.strip().rsplit(" ", 1)[-1]
        for _ in range(1200):  # (it listens once uvicorn has started and the model ran each batch size)
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)

    def request(self, path: str, body: bytes | None = None) -> tuple[int, object]:
        req = urllib.request.Request(self.url + path, body, {"Content-Type": "application/json"} if body else {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                text = r.read()
                return r.status, json.loads(text) if r.headers.get_content_type() == "application/json" else text
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def get(self, path: str):
        return self.request(path)

    def post(self, path: str, payload) -> tuple[int, object]:
        return self.request(path, payload if isinstance(payload, bytes) else json.dumps(payload).encode())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def _infer_body(x: np.ndarray) -> dict:
    return {"id": "r1", "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                    "data": x.ravel().tolist()}]}


def _expected(model, x: np.ndarray) -> np.ndarray:
    with jt.no_grad():
        return model(jt.tensor(x)).numpy()


@pytest.fixture(scope="module")
def server(exported):
    path, _ = exported
    s = Server(f"cnn={path}", f"cnn:2={path}", "--max-delay-ms", "100", "--max-batch", "32")
    yield s
    assert s.stop() == 0


def test_health_metadata_and_versions(server):
    assert server.get("/v2/health/live") == (200, {"live": True})
    assert server.get("/v2/health/ready") == (200, {"ready": True})
    assert server.get("/v2")[1]["name"] == "jitorch"
    status, meta = server.get("/v2/models/cnn")
    assert status == 200 and meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "out", "datatype": "FP32", "shape": [-1, 10]}]
    assert server.get("/v2/models/cnn/versions/2/ready")[0] == 200
    status, err = server.get("/v2/models/cnn/versions/3")
    assert status == 404 and "no version '3'" in err["error"]


def test_an_inference_is_the_models_output(server, exported):
    _, model = exported
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8), dtype=np.float32)
    for path in ("/v2/models/cnn/infer", "/v2/models/cnn/versions/1/infer"):
        status, answer = server.post(path, _infer_body(x))
        assert status == 200 and answer["id"] == "r1" and answer["model_name"] == "cnn"
        (out,) = answer["outputs"]
        assert out["name"] == "out" and out["shape"] == [3, 10] and out["datatype"] == "FP32"
        np.testing.assert_allclose(np.array(out["data"]).reshape(3, 10), _expected(model, x), rtol=1e-5, atol=1e-6)
    status, rows = server.post("/predictions/cnn", x[0].tolist())  # TorchServe's path: one row, no batch dim
    assert status == 200
    np.testing.assert_allclose(np.array(rows), _expected(model, x[:1]), rtol=1e-5, atol=1e-6)


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server, exported):
    _, model = exported
    clients = 24
    rows = np.random.default_rng(1).standard_normal((clients, 1, 1, 8, 8), dtype=np.float32)
    start = threading.Barrier(clients)

    def one(k: int):
        start.wait()
        return server.post("/v2/models/cnn/versions/1/infer", _infer_body(rows[k]))

    def batches() -> float:
        text = server.get("/metrics")[1].decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("jitorch_batch_size_count") and 'version="1"' in line)

    before = batches()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, range(clients)))
    calls = batches() - before
    for k, (status, answer) in enumerate(answers):
        assert status == 200
        got = np.array(answer["outputs"][0]["data"]).reshape(1, 10)
        np.testing.assert_allclose(got, _expected(model, rows[k]), rtol=1e-5, atol=1e-6)
    assert 1 <= calls < clients  # several requests ran as one call
    metrics = server.get("/metrics")[1].decode()
    assert 'jitorch_requests_total{code="200",model="cnn",protocol="kserve",version="1"}' in metrics
    assert "jitorch_request_latency_seconds_bucket" in metrics


@pytest.mark.parametrize("payload, status, message", [
    (b"{not json", 400, "not valid JSON"),
    ({"inputs": "x"}, 400, '"name": "input", "datatype": "FP32", "shape": \\[-1, 1, 8, 8\\]'),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP64", "data": [0.0] * 64}]}, 400,
     "datatype 'FP64', expected 'FP32'"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 9, 9], "datatype": "FP32", "data": [0.0] * 81}]}, 400,
     r"expected shape \[s0, 1, 8, 8\]"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 7}]}, 400,
     "does not make a float32 array of shape"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": ["a"] * 64}]}, 400,
     "does not make a float32 array"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [0.0]}]}, 400, "missing input 'input'"),
    ({"inputs": []}, 400, "missing input"),
], ids=["json", "inputs", "dtype", "shape", "size", "values", "name", "empty"])
def test_bad_requests_get_a_4xx_naming_what_is_expected(server, payload, status, message):
    got, answer = server.post("/v2/models/cnn/infer", payload)
    assert got == status and re.search(message, answer["error"]), answer["error"]
    assert server.get("/v2/health/live")[0] == 200  # and the server goes on


def test_unknown_models_and_oversized_bodies(exported):
    path, _ = exported
    s = Server(str(path), "--max-body-mb", "0.001")
    try:
        status, err = s.post("/v2/models/nope/infer", {"inputs": []})
        assert status == 404 and "no model named 'nope'" in err["error"] and "cnn" in err["error"]
        x = np.zeros((8, 1, 8, 8), np.float32)
        status, err = s.post("/v2/models/cnn/infer", _infer_body(x))
        assert status == 413 and "at most" in err["error"]
    finally:
        assert s.stop() == 0


def test_a_shutdown_under_load_answers_every_request_in_flight(exported):
    path, model = exported
    s = Server(str(path), "--max-delay-ms", "300", "--max-batch", "1000", "--no-warm-up")
    rows = np.random.default_rng(2).standard_normal((12, 1, 1, 8, 8), dtype=np.float32)
    with ThreadPoolExecutor(len(rows)) as pool:
        pending = [pool.submit(s.post, "/v2/models/cnn/infer", _infer_body(r)) for r in rows]
        time.sleep(0.15)  # (the requests wait in the batcher: the delay is 300 ms)
        code = s.stop()
        answers = [p.result() for p in pending]
    assert code == 0
    for r, (status, answer) in zip(rows, answers):
        assert status == 200
        np.testing.assert_allclose(np.array(answer["outputs"][0]["data"]).reshape(1, 10), _expected(model, r),
                                   rtol=1e-5, atol=1e-6)


def test_a_batch_dims_bounds_pad_small_batches_and_refuse_large_requests(tmp_path):
    model = _model()
    path = tmp_path / "bounded.jtexport"
    batch = jt.export.Dim("batch", min=3, max=8)
    jt.export.save(jt.export.export(model, (jt.randn(4, 1, 8, 8),), dynamic_shapes=({0: batch},)), path)
    model.eval()
    s = Server(str(path), "--max-batch", "32", "--max-delay-ms", "1")
    try:
        x = np.random.default_rng(3).standard_normal((1, 1, 8, 8), dtype=np.float32)
        status, answer = s.post("/v2/models/bounded/infer", _infer_body(x))  # one row: run padded to 3
        assert status == 200 and answer["outputs"][0]["shape"] == [1, 10]
        np.testing.assert_allclose(np.array(answer["outputs"][0]["data"]).reshape(1, 10), _expected(model, x),
                                   rtol=1e-5, atol=1e-6)
        status, err = s.post("/v2/models/bounded/infer", _infer_body(np.zeros((9, 1, 8, 8), np.float32)))
        assert status == 400 and "the first 1 to 8" in err["error"]
    finally:
        assert s.stop() == 0
