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
    (b"\x01\x02", "too short"),
    (_valid()[:-3], "do not hold|invalid"),
    ((10 ** 9).to_bytes(8, "little") + b"{}", "does not fit"),
    (b"\x04\0\0\0\0\0\0\0{abc", "not valid JSON"),
    (_with_header([1, 2]), "JSON object"),
    (_with_header({"a": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}), "malformed entry"),
    (_with_header({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}), "do not hold shape"),
    (_with_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}), "gap"),
    (_with_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}), "8 bytes after"),
    (_with_header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}), "overlaps"),
])
def test_corrupt_files_are_rejected_clearly(raw, message):
    with pytest.raises(checkpoint.CheckpointError, match=message):
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
    with pytest.raises(TypeError, match="strings to strings"):
        checkpoint.encode({"a": np.ones(1)}, {"step": 3})


def test_written_files_get_the_mode_open_would_give(tmp_path):
    mask = os.umask(0o022)
    try:
        checkpoint.save_file(tmp_path / "m.safetensors", {"a": np.ones(1)})
    finally:
        os.umask(mask)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644
