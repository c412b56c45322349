"""Data sets, the IDX parser and the batch iterator (minidiff/data.py, docs/training.md §1)."""
import gzip
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minidiff import data

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def test_digits_split_is_fixed_disjoint_and_scaled():
    a, b = data.digits(), data.digits()
    assert a.x_train.shape == (1438, 1, 8, 8) and a.x_test.shape == (359, 1, 8, 8)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.x_train.min() == -1.0 and a.x_train.max() == 1.0
    np.testing.assert_array_equal(a.x_test, b.x_test)  # the split is seeded, so fixed
    assert set(np.unique(a.y_test)) == set(range(10))
    train_rows = {r.tobytes() for r in a.x_train.reshape(len(a.x_train), -1)}
    overlap = sum(r.tobytes() in train_rows for r in a.x_test.reshape(len(a.x_test), -1))
    assert overlap < 5  # only the handful of pixel-identical duplicates in the raw data
    c = data.digits(seed=1)
    assert not np.array_equal(a.x_test, c.x_test)


@given(st.sampled_from(IDX_DTYPES).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5))),
    st.booleans())
def test_idx_round_trip(tmp_path_factory, array, compressed):
    path = tmp_path_factory.mktemp("idx") / ("a.idx" + (".gz" if compressed else ""))
    data.write_idx(path, array)
    back = data.read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_reads_the_mnist_byte_layout_written_by_hand(tmp_path):
    # magic 0x00000803 (ubyte, 3 dims), sizes 2, 2, 3 big-endian, then 12 pixels
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    (tmp_path / "x").write_bytes(raw)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x"), np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
    # int32 labels are big-endian on disk
    raw = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + (258).to_bytes(4, "big") + (-1).to_bytes(4, "big", signed=True)
    (tmp_path / "y").write_bytes(raw)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "y"), [258, -1])


@pytest.mark.parametrize("raw, message", [
    (b"\x00\x00", "too short"),
    (bytes([1, 0, 8, 1, 0, 0, 0, 1, 7]), "magic"),
    (bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]), "data type code 0x0A"),
    (bytes([0, 0, 8, 0]), "0 dimensions"),
    (bytes([0, 0, 8, 3, 0, 0, 0, 2]), "ends inside the header"),
    (bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2]), "shape (3,) of uint8 (11 bytes in all) but the file has 10 bytes"),
    (bytes([0, 0, 8, 1, 0, 0, 0, 1, 1, 2]), "(9 bytes in all) but the file has 10 bytes"),
])
def test_idx_rejects_malformed_files(tmp_path, raw, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(raw)
    with pytest.raises(data.IDXError, match=re.escape(message)):
        data.read_idx(path)


@given(st.integers(1, 40))
def test_idx_truncation_anywhere_is_caught(cut):
    raw = bytes([0, 0, 8, 2, 0, 0, 0, 4, 0, 0, 0, 8]) + bytes(32)
    with pytest.raises(data.IDXError):
        data.parse_idx(raw[:len(raw) - cut])


def test_mnist_loader_reads_a_tiny_fake_mnist_folder(tmp_path):
    rng = np.random.default_rng(0)
    for key, stem in data.MNIST_FILES.items():
        n = 5 if "train" in key else 3
        arr = rng.integers(0, 256, (n, 28, 28)) if key[0] == "x" else rng.integers(0, 10, n)
        data.write_idx(tmp_path / (stem + ".gz"), arr.astype(np.uint8))
    ds = data.mnist(tmp_path)
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.y_test.shape == (3,)
    assert -1.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.mnist(tmp_path)


def test_mnist_loader_rejects_mismatched_labels(tmp_path):
    for key, stem in data.MNIST_FILES.items():
        n = 4 if key == "y_train" else 3
        arr = np.zeros((n, 28, 28) if key[0] == "x" else (n,), dtype=np.uint8)
        with gzip.open(tmp_path / (stem + ".gz"), "wb") as f:
            f.write(bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes() + arr.tobytes())
    with pytest.raises(data.IDXError, match="do not match"):
        data.mnist(tmp_path)


@given(st.sampled_from(data.SHAPE_NAMES), st.integers(8, 24), st.floats(0.2, 0.35))
def test_drawn_shapes_have_the_right_area(kind, size, rel_radius):
    r = rel_radius * size
    mask = data.draw_shape(kind, size, (size / 2, size / 2), r)
    area = {"disc": np.pi * r ** 2, "square": (2 * r) ** 2, "triangle": 2 * r ** 2}[kind]
    assert abs(mask.sum() - area) <= 4 * (2 * r + 1) + 2  # pixelation error is O(perimeter)


def test_shapes_dataset():
    ds = data.shapes(60, size=12)
    assert ds.x_train.shape[1:] == (1, 12, 12) and set(np.unique(ds.x_train)) == {-1.0, 1.0}
    assert ds.num_classes == 3
    with pytest.raises(ValueError, match="size must be >= 6"):
        data.shapes(10, size=4)


@given(st.integers(1, 300), st.integers(0, 2 ** 31))
def test_toy_sets_have_their_geometry(n, seed):
    moons, label = data.two_moons(n, noise=0.0, seed=seed)
    upper = moons[label == 0]
    np.testing.assert_allclose(np.hypot(*upper.T), 1.0, rtol=1e-5)
    lower = moons[label == 1]
    np.testing.assert_allclose(np.hypot(lower[:, 0] - 1, lower[:, 1] - 0.5), 1.0, rtol=1e-5)
    roll = data.swiss_roll(n, noise=0.0, seed=seed)
    radius = np.hypot(*roll.T) * 3 * np.pi
    assert np.all((radius >= 1.5 * np.pi - 1e-3) & (radius <= 4.5 * np.pi + 1e-3))
    g, k = data.eight_gaussians(n, std=0.0, seed=seed)
    np.testing.assert_allclose(g, np.stack([np.cos(np.pi * k / 4), np.sin(np.pi * k / 4)], 1), atol=1e-6)


@given(st.integers(1, 200), st.integers(1, 64), st.integers(0, 1000), st.integers(0, 50))
def test_batch_stream_is_a_function_of_seed_and_step(n, batch_size, seed, step):
    if batch_size > n:
        with pytest.raises(ValueError, match="batch_size"):
            data.BatchStream(n, batch_size, seed)
        return
    stream = data.BatchStream(n, batch_size, seed)
    fresh = data.BatchStream(n, batch_size, seed)
    idx = stream.indices(step)
    assert len(idx) == batch_size and len(set(idx.tolist())) == batch_size
    np.testing.assert_array_equal(fresh.indices(step), idx)  # no hidden state: resume-safe
    epoch = step // stream.batches_per_epoch
    seen = np.concatenate([stream.indices(epoch * stream.batches_per_epoch + k)
                           for k in range(stream.batches_per_epoch)])
    assert len(set(seen.tolist())) == len(seen)  # an epoch never repeats an item


@given(st.integers(1, 50), st.integers(1, 20), st.booleans())
def test_iterate_batches_covers_every_item_once(n, batch_size, drop_last):
    x, y = np.arange(n), np.arange(n) * 10
    batches = list(data.iterate_batches((x, y), batch_size, seed=3, drop_last=drop_last))
    seen = np.concatenate([b[0] for b in batches]) if batches else np.array([], int)
    for bx, by in batches:
        np.testing.assert_array_equal(by, bx * 10)
    expected = n - n % batch_size if drop_last else n
    assert len(seen) == expected and len(set(seen.tolist())) == expected


def test_load_images_errors():
    with pytest.raises(ValueError, match="name must be one of .*got 'cifar'"):
        data.load_images("cifar")
    with pytest.raises(ValueError, match="IDX files"):
        data.load_images("mnist")
