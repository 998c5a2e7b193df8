"""`jitorch.export`: export a model's inference graph, save it, load it in a process that never
imports the model's code, and refuse every malformed artifact with an error naming the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jitorch as jt
from jitorch.export import ExportError, FormatError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import char_lm  # noqa: E402
import digits  # noqa: E402

_ON_CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not jt.cuda.is_available(),
                                                                             reason="needs an NVIDIA GPU")])

# run in a fresh process: load and call the program, with nothing of the model's code imported
LOAD_AND_RUN = """
import sys, numpy as np, jitorch as jt
path, inputs, out, device = sys.argv[1:5]
program = jt.export.load(path, device=device)
args = [jt.tensor(a).to(device) for a in np.load(inputs).values()]
result = program(*args)
leaves = result if isinstance(result, (tuple, list)) else [result]
np.savez(out, *[t.cpu().numpy() for t in leaves])
assert "char_lm" not in sys.modules and "digits" not in sys.modules
"""


def _eager(model, *args):
    model.eval()
    with jt.no_grad():
        return model(*args)


def _run_elsewhere(path, args: list[np.ndarray], tmp_path, device: str = "cpu") -> list[np.ndarray]:
    inputs, out = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs, *args)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(path), str(inputs), str(out), device],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as found:
        return [found[k] for k in found.files]


def _digits_cnn():
    jt.manual_seed(0)
    return digits.build_cnn(), jt.randn(5, 1, 8, 8)


def _char_lm():
    jt.manual_seed(0)
    config = char_lm.Config(d_model=32, n_head=4, n_layer=2, block_size=16)
    codes = jt.tensor(np.random.default_rng(0).integers(0, config.vocab_size, (3, 16)))
    return char_lm.build_model(config), codes


@pytest.mark.parametrize("make", [_digits_cnn, _char_lm], ids=["digits_cnn", "char_lm"])
def test_a_saved_program_runs_in_a_fresh_process_as_the_model_does(make, tmp_path):
    model, x = make()
    want = _eager(model, x).numpy()
    ep = jt.export.export(model, (x,))
    jt.export.save(ep, tmp_path / "model")
    (got,) = _run_elsewhere(tmp_path / "model", [x.numpy()], tmp_path)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_export_against_pytorch_for_a_small_mlp(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w1, b1 = rng.standard_normal((16, 8), dtype=np.float32), rng.standard_normal(16, dtype=np.float32)
    w2, b2 = rng.standard_normal((3, 16), dtype=np.float32), rng.standard_normal(3, dtype=np.float32)
    x = rng.standard_normal((4, 8), dtype=np.float32)

    def build(lib):
        model = lib.nn.Sequential(lib.nn.Linear(8, 16), lib.nn.GELU(), lib.nn.Linear(16, 3), lib.nn.LogSoftmax(-1))
        with lib.no_grad():
            for p, v in zip(model.parameters(), (w1, b1, w2, b2)):
                p.copy_(lib.tensor(v))
        return model

    want = build(torch)(torch.tensor(x)).detach().numpy()
    jt.export.save(jt.export.export(build(jt), (jt.tensor(x),)), tmp_path / "mlp")
    got = jt.export.load(tmp_path / "mlp")(jt.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_bfloat16_model_round_trips(tmp_path):
    """Weights and outputs in bfloat16 (safetensors' BF16) give the model's own bfloat16 values."""
    jt.manual_seed(0)
    model = jt.nn.Sequential(jt.nn.Linear(8, 16), jt.nn.GELU(), jt.nn.Linear(16, 4)).to(jt.bfloat16)
    x = jt.randn(5, 8).to(jt.bfloat16)
    jt.export.save(jt.export.export(model, (x,), dynamic_shapes=({0: "batch"},)), tmp_path / "bf16")
    program = jt.export.load(tmp_path / "bf16")
    assert program.input_specs[0].dtype == "bfloat16"
    got, want = program(x), _eager(model, x)
    assert got.dtype == jt.bfloat16
    np.testing.assert_allclose(got.float().numpy(), want.float().numpy(), rtol=2**-7, atol=2**-7)


def test_nested_outputs_and_a_function_with_closed_over_tensors(tmp_path):
    scale = jt.tensor([1.0, 2.0, 3.0])

    def fn(a, b):
        s = a * scale + b
        return {"sum": s.sum(-1), "parts": (s.relu(), (a - b).abs().max())}

    a, b = jt.randn(2, 3), jt.randn(2, 3)
    want = fn(a, b)
    ep = jt.export.export(fn, (a, b))
    assert [s.name for s in ep.input_specs] == ["a", "b"] and "ExportedProgram" in str(ep)
    jt.export.save(ep, tmp_path / "fn")
    got = jt.export.load(tmp_path / "fn")(a, b)
    assert set(got) == {"sum", "parts"} and isinstance(got["parts"], tuple)
    np.testing.assert_allclose(got["sum"].numpy(), want["sum"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got["parts"][0].numpy(), want["parts"][0].numpy(), rtol=1e-6)
    assert got["parts"][1].item() == want["parts"][1].item()


def test_export_leaves_the_model_in_its_mode_and_uses_eval_behaviour():
    jt.manual_seed(0)
    model = jt.nn.Sequential(jt.nn.Linear(4, 4), jt.nn.Dropout(0.5), jt.nn.BatchNorm1d(4))
    model.train()
    x = jt.randn(6, 4)
    running = model[2].running_mean.numpy().copy()
    ep = jt.export.export(model, (x,))
    assert model.training and np.array_equal(model[2].running_mean.numpy(), running)  # nothing updated
    np.testing.assert_allclose(ep.module()(x).numpy(), _eager(model, x).numpy(), rtol=1e-5, atol=1e-6)


def test_calls_with_other_shapes_dtypes_or_counts_are_refused_by_name(tmp_path):
    model, x = _digits_cnn()
    jt.export.save(jt.export.export(model, (x,)), tmp_path / "cnn")
    program = jt.export.load(tmp_path / "cnn")
    with pytest.raises(ValueError, match=r"input input: expected float32\[5, 1, 8, 8\], got float32\[2, 1, 8, 8\]"):
        program(jt.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="expected float32.*got float64"):
        program(x.double())
    with pytest.raises(TypeError, match="takes 1 inputs"):
        program(x, x)
    with pytest.raises(TypeError, match="expected a tensor"):
        program(x.numpy())


def test_what_cannot_be_exported_says_why(tmp_path):
    x = jt.randn(3)
    with pytest.raises(ExportError, match=r"dynamic_shapes names \['u'\], which are not arguments"):
        jt.export.export(lambda t: t * 2, (x,), dynamic_shapes={"u": {0: "batch"}})
    with pytest.raises(ExportError, match="out of range"):
        jt.export.export(lambda t: t * 2, (x,), dynamic_shapes=({1: "batch"},))
    with pytest.raises(ExportError, match="writes state"):
        jt.export.export(lambda t: t.add_(1), (x,))
    with pytest.raises(ExportError, match="random"):
        jt.export.export(lambda t: t + jt.rand(3), (x,))
    with pytest.raises(ExportError, match="must be tensors"):
        jt.export.export(lambda t, k: t * k, (x, 2.0))
    with pytest.raises(ExportError, match="computes"):
        jt.export.export(lambda t: (t, t * 2), (x,))  # an input returned as it is
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="not an exported program"):
        jt.export.save(jt.export.export(lambda t: t * 2, (x,)), tmp_path / "taken")


@pytest.fixture
def saved(tmp_path):
    model, x = _digits_cnn()
    path = tmp_path / "cnn"
    jt.export.save(jt.export.export(model, (x,)), path)
    return path


def _edit_graph(path, edit):
    graph_file = path / "program.json"
    document = json.loads(graph_file.read_text())
    edit(document)
    graph_file.write_text(json.dumps(document))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["nodes"][3].update(op="os.system"), r"unknown op 'os.system'"),
    (lambda d: d.update(version=99), r"format version 99; this jitorch reads version 1"),
    (lambda d: d.update(format="pickle"), r"not a jitorch.export program"),
    (lambda d: d["nodes"][0].update(shape=[7, 7]), r"inconsistent graph"),
    (lambda d: d["nodes"][1].update(inputs=[12345]), r"not all values defined before it"),
    (lambda d: d["nodes"][0]["params"].update(kernel={"__reduce__": ["os.system", ["true"]]}), r"unreadable param"),
    (lambda d: d["inputs"][1].update(weight="no.such.weight"), r"weight 'no.such.weight' is missing"),
    (lambda d: d["outputs"][0].update(value=99999), r"names no defined value"),
    (lambda d: d["inputs"][0].update(arg="0"), r"an argument's position is an int"),
    (lambda d: d["inputs"][1].update(weight=["0.weight"]), r"a weight's name a str"),
], ids=["unknown op", "version", "format", "shape", "undefined input", "param", "missing weight", "output",
        "arg position", "weight name"])
def test_a_malformed_graph_is_refused_naming_the_file(saved, edit, message):
    _edit_graph(saved, edit)
    with pytest.raises(FormatError, match=message) as err:
        jt.export.load(saved)
    assert str(saved) in str(err.value)


def test_truncated_oversized_or_inconsistent_weights_are_refused(saved):
    weights = saved / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    with pytest.raises(FormatError, match="truncated"):
        jt.export.load(saved)
    weights.write_bytes(data + b"\0" * 16)
    with pytest.raises(FormatError, match=r"corrupt: the header describes \d+ bytes of tensor data, but the file "
                                          r"holds \d+"):
        jt.export.load(saved)
    weights.write_bytes(data[:4])
    with pytest.raises(FormatError, match="truncated"):
        jt.export.load(saved)
    (n,) = np.frombuffer(data[:8], "<u8")
    header = json.loads(data[8:8 + int(n)])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [header[name]["shape"][0] + 1, *header[name]["shape"][1:]]
    text = json.dumps(header).encode()
    weights.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + int(n):])
    with pytest.raises(FormatError, match=f"tensor '{name}'"):
        jt.export.load(saved)
    (saved / "program.json").write_text('{"format": "jitorch.export", "nodes": [')
    with pytest.raises(FormatError, match="not JSON"):
        jt.export.load(saved)


def test_saving_again_replaces_the_program_whole(saved):
    x = jt.randn(2, 3)
    jt.export.save(jt.export.export(lambda t: t * 3, (x,)), saved)
    np.testing.assert_allclose(jt.export.load(saved)(x).numpy(), (x * 3).numpy())
    assert sorted(os.listdir(saved)) == ["program.json", "weights.safetensors"]
    assert [p for p in os.listdir(saved.parent) if "partial" in p or "old" in p] == []


def test_a_dynamic_batch_serves_every_batch_size(tmp_path):
    model, x = _digits_cnn()
    ep = jt.export.export(model, (x,), dynamic_shapes={"input": {0: jt.export.Dim("batch")}})
    assert ep.input_specs[0].shape == ("s0", 1, 8, 8) and "input.size(0)" in str(ep)
    jt.export.save(ep, tmp_path / "cnn")
    program = jt.export.load(tmp_path / "cnn")
    for batch in (2, 7, 16, 5):
        images = jt.randn(batch, 1, 8, 8)
        want = _eager(model, images).numpy()
        np.testing.assert_allclose(program(images).numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match=r"input: expected float32\[7, 1, 8, 8\], got float32\[7, 1, 9, 9\]"):
        program(jt.randn(7, 1, 9, 9))  # only the batch is dynamic
    with pytest.raises(ValueError, match=r"input.size\(0\) is 1"):
        program(jt.randn(1, 1, 8, 8))


def test_a_dynamic_size_used_as_a_number_follows_each_call(tmp_path):
    """A size the model computes with (a mean by hand) is an input of the saved graph, given by each
    call's shapes."""
    def mean_of_rows(x):
        return x.sum(1) / x.shape[1]

    ep = jt.export.export(mean_of_rows, (jt.randn(3, 5),), dynamic_shapes=({1: "n"},))
    assert [i.kind for i in ep.graph.inputs] == ["arg", "size"]
    jt.export.save(ep, tmp_path / "mean")
    program = jt.export.load(tmp_path / "mean")
    for n in (5, 9, 2):
        x = jt.randn(3, n)
        np.testing.assert_allclose(program(x).numpy(), mean_of_rows(x).numpy(), rtol=1e-6)


def test_a_dims_bounds_are_kept_and_checked(tmp_path):
    model, x = _digits_cnn()
    with pytest.raises(ExportError, match=r"input.size\(0\) is 5 in the example, outside Dim\('batch', max=4\)"):
        jt.export.export(model, (x,), dynamic_shapes={"input": {0: jt.export.Dim("batch", max=4)}})
    ep = jt.export.export(model, (x,), dynamic_shapes={"input": {0: jt.export.Dim("batch", min=3, max=8)}})
    jt.export.save(ep, tmp_path / "cnn")
    assert json.loads((tmp_path / "cnn" / "program.json").read_text())["bounds"] == {"s0": [3, 8]}
    program = jt.export.load(tmp_path / "cnn")
    assert program(jt.randn(8, 1, 8, 8)).shape == (8, 10)
    with pytest.raises(ValueError, match=r"input.size\(0\) is 9; the program was exported for sizes 3 to 8"):
        program(jt.randn(9, 1, 8, 8))
    with pytest.raises(ValueError, match="is 2; the program was exported for sizes 3 to 8"):
        program(jt.randn(2, 1, 8, 8))


def test_a_dynamic_batch_and_length_in_a_fresh_process(tmp_path):
    model, codes = _char_lm()
    ep = jt.export.export(model, (codes,), dynamic_shapes=({0: "batch", 1: "length"},))
    jt.export.save(ep, tmp_path / "lm")
    shorter = jt.tensor(np.random.default_rng(2).integers(0, 103, (5, 9)))
    for tokens in (codes, shorter):
        (got,) = _run_elsewhere(tmp_path / "lm", [tokens.numpy()], tmp_path)
        want = _eager(model, tokens).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("device", [_ON_CUDA])
def test_a_program_exported_on_the_cpu_runs_on_the_gpu(device, tmp_path):
    model, codes = _char_lm()
    want = _eager(model, codes).numpy()
    jt.export.save(jt.export.export(model, (codes,)), tmp_path / "lm")
    (got,) = _run_elsewhere(tmp_path / "lm", [codes.numpy()], tmp_path, device)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
