"""Safetensors checkpoints: bit-exact round trips, the byte layout, atomic writes, clear errors."""
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minidiff import checkpoint

STORABLE = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
            np.uint64, np.uint32, np.uint16, np.uint8, np.bool_]
names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=12).filter(
    lambda s: s != "__metadata__")
tensor_dicts = st.dictionaries(names, st.sampled_from(STORABLE).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))), max_size=5)


@given(tensor_dicts, st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3))
def test_round_trip_is_bit_exact(tensors, metadata):
    back, meta = checkpoint.decode(checkpoint.encode(tensors, metadata))
    assert set(back) == set(tensors) and meta == metadata
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        assert back[name].tobytes() == np.ascontiguousarray(array).tobytes()  # NaN payloads and -0.0 too


@given(hnp.arrays(np.float32, (3, 2), elements=st.floats(width=32)),
       hnp.arrays(np.int64, (4,)))
def test_byte_layout_follows_the_safetensors_spec(a, b):
    raw = checkpoint.encode({"w": a, "b": b}, {"step": "7"})
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"] == {"step": "7"}
    assert header["b"] == {"dtype": "I64", "shape": [4], "data_offsets": [0, 32]}
    assert header["w"] == {"dtype": "F32", "shape": [3, 2], "data_offsets": [32, 56]}
    body = raw[8 + n:]
    assert body[:32] == b.astype("<i8").tobytes() and body[32:] == a.astype("<f4").tobytes()


def test_non_contiguous_and_big_endian_arrays_are_stored_by_value():
    x = np.arange(12, dtype=">f8").reshape(3, 4).T
    back, _ = checkpoint.decode(checkpoint.encode({"x": x}))
    np.testing.assert_array_equal(back["x"], x)
    assert back["x"].dtype == np.float64


def test_training_checkpoint_groups_and_state(tmp_path):
    path = tmp_path / "model.safetensors"
    params = {"conv.weight": np.ones((2, 1, 3, 3), np.float32)}
    state = {"step": 5, "config": {"model": "ddpm"}, "history": [1.5, float("nan")]}
    checkpoint.save_checkpoint(path, params, state, ema={"conv.weight": np.zeros((2, 1, 3, 3), np.float32)},
                               optim={"m.0": np.full(3, 2.0)})
    groups, back = checkpoint.load_checkpoint(path)
    assert back["step"] == 5 and back["config"] == {"model": "ddpm"} and np.isnan(back["history"][1])
    np.testing.assert_array_equal(groups["params"]["conv.weight"], params["conv.weight"])
    assert groups["ema"]["conv.weight"].sum() == 0 and groups["optim"]["m.0"].tolist() == [2.0] * 3
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temporary file left behind


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    checkpoint.save_file(path, {"a": np.ones(3)})
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_file(path, {"a": np.zeros(3)})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.safetensors"]


def _valid():
    return checkpoint.encode({"a": np.arange(4, dtype=np.float32)}, {"minidiff": "{}"})


def _with_header(header, body=b"\0" * 16):
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


@pytest.mark.parametrize("raw, message", [
    (b"\x01\x02", "header too small"),
    (_valid()[:-3], "not fully covered"),
    ((10 ** 9).to_bytes(8, "little") + b"{}", "header too large"),
    (b"\x04\0\0\0\0\0\0\0{abc", "invalid JSON"),
    (_with_header([1, 2]), "invalid JSON"),
    (_with_header({"a": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}), "unknown variant `Q9`"),
    (_with_header({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}), "invalid shape"),
    (_with_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}), "invalid offset for tensor `a`"),
    (_with_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}), "not fully covered"),
    (_with_header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}), "invalid offset for tensor `b`"),
    (_with_header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "__metadata__": {"k": 3}}),
     "expected a string"),
])
def test_corrupt_files_are_rejected_clearly(raw, message):
    with pytest.raises(checkpoint.CheckpointError, match=f"<bytes>: not a valid safetensors file .*{message}"):
        checkpoint.decode(raw)


@given(st.integers(1, 60))
def test_any_truncation_is_rejected(cut):
    raw = _valid()
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.decode(raw[:max(len(raw) - cut, 0)])


def test_load_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load_file(tmp_path / "nope.safetensors")
    checkpoint.save_file(tmp_path / "plain.safetensors", {"a": np.ones(2)})
    with pytest.raises(checkpoint.CheckpointError, match="not a minidiff training checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "plain.safetensors")
    with pytest.raises(TypeError, match="complex128"):
        checkpoint.encode({"c": np.ones(2, complex)})
    with pytest.raises(TypeError, match="metadata"):
        checkpoint.encode({"a": np.ones(1)}, {"step": 3})


def test_written_files_get_the_mode_open_would_give(tmp_path):
    mask = os.umask(0o022)
    try:
        checkpoint.save_file(tmp_path / "m.safetensors", {"a": np.ones(1)})
    finally:
        os.umask(mask)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------- the safetensors library reads and writes them


def test_a_minidiff_checkpoint_opens_with_safetensors_torch(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors
    import safetensors.torch
    path = tmp_path / "model.safetensors"
    params = {"conv.weight": np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32)}
    checkpoint.save_checkpoint(path, params, {"step": 3}, optim={"m.0": np.arange(3, dtype=np.int64)})
    loaded = safetensors.torch.load_file(path)
    assert set(loaded) == {"params.conv.weight", "optim.m.0"}
    assert loaded["params.conv.weight"].dtype == torch.float32 and loaded["optim.m.0"].dtype == torch.int64
    np.testing.assert_array_equal(loaded["params.conv.weight"].numpy(), params["conv.weight"])
    with safetensors.safe_open(path, framework="pt") as f:
        assert json.loads(f.metadata()[checkpoint.METADATA_KEY]) == {"step": 3}


def test_a_file_the_library_writes_opens_in_minidiff(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch
    path = tmp_path / "theirs.safetensors"
    tensors = {"w": torch.randn(3, 4, dtype=torch.float64), "idx": torch.arange(5, dtype=torch.int32),
               "h": torch.randn(2, dtype=torch.float16), "mask": torch.tensor([True, False])}
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
    back, metadata = checkpoint.load_file(path)
    assert metadata == {"format": "pt"} and set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.numpy().dtype
        np.testing.assert_array_equal(back[name], t.numpy())
    back["w"][0, 0] = 1.0  # a writable copy, not a view of the file's bytes


@pytest.mark.parametrize("dtype, code", [("bfloat16", "BF16"), ("float8_e4m3fn", "F8_E4M3")])
def test_a_dtype_numpy_cannot_hold_is_refused_naming_it(tmp_path, dtype, code):
    torch = pytest.importorskip("torch")
    import safetensors.torch
    path = tmp_path / "half.safetensors"
    safetensors.torch.save_file({"ok": torch.ones(2), "w": torch.ones(4).to(getattr(torch, dtype))}, path)
    with pytest.raises(checkpoint.CheckpointError, match=rf"\{{'w': '{code}'\}}.*NumPy cannot hold"):
        checkpoint.load_file(path)


def test_a_checkpoint_missing_a_weight_is_refused_naming_it(tmp_path):
    from minidiff import models
    from minidiff.models.ddpm import DDPM
    model = DDPM(image_shape=(1, 8, 8), T=10, base_channels=8, channel_mults=(1,), attention_resolutions=())
    params = model.state_dict()
    dropped = sorted(params)[0]
    del params[dropped]
    path = tmp_path / "model.safetensors"
    checkpoint.save_checkpoint(path, params, {"model": model.name, "hparams": model.hparams})
    with pytest.raises(checkpoint.CheckpointError, match=rf"do not fit model 'ddpm'.*missing keys \['{dropped}'\]"):
        models.load(path)
    checkpoint.save_checkpoint(path, model.state_dict(), {"step": 1})
    with pytest.raises(checkpoint.CheckpointError, match="names no model"):
        models.load(path)
