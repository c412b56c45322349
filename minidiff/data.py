"""Data sets and a seeded batch iterator (docs/training.md §1).

Images are float32 arrays of shape (N, C, H, W) scaled to [-1, 1] with integer labels (N,):
- `digits()`: scikit-learn's bundled 8x8 handwritten digits (1797 images, pixel values 0..16),
  split into train and test by a fixed seeded permutation; the default everywhere.
- `mnist(root)`: MNIST or Fashion-MNIST from the four IDX files the user downloaded (`read_idx`).
- `shapes(n)`: procedurally drawn discs, squares and triangles (label = shape).
Toy 2-D point clouds (N, 2): `two_moons`, `swiss_roll`, `eight_gaussians`; `points(name)` splits one
into train and test like the images (POINT_SETS), and `load_dataset(name)` loads any of DATASETS.

`BatchStream` makes batch k a pure function of (seed, k), so a resumed run sees the same batches.
"""
import dataclasses
import gzip
import math
import os

import numpy as np

from minidiff import checks

# ---------------------------------------------------------------- image data sets


@dataclasses.dataclass
class ImageDataset:
    """A train/test split of images in [-1, 1], x_* (N, C, H, W) float32, or of points x_* (N, D); y_* (N,) int64.

    levels: the number K of grey levels the pixels take, on the grid x = -1 + 2k/(K - 1), k = 0..K-1
    (17 for the 0..16 digits, 256 for 8-bit MNIST, 2 for the black-and-white shapes); the
    discretised decoder's bins and bits/dim are on this grid (docs/vlb_bits_per_dim.md §2). None for
    points, which are continuous.
    """
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    levels: int | None = None

    def __post_init__(self):
        """Each split's images and labels of one length, train and test of one item shape, labels integers."""
        where = "ImageDataset"
        checks.instance("name", self.name, str, "a str", where)
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            checks.batch(where, **{f"x_{split}": x, f"y_{split}": y})
            checks.shape(f"y_{split}", y, (len(y),), where, because=" (one label per item)")
            if np.dtype(y.dtype).kind not in "iu":
                raise TypeError(f"{where}: y_{split} must hold integer labels, got dtype {y.dtype}")
        checks.shape("x_test", self.x_test, (None,) + tuple(self.x_train.shape[1:]), where,
                     because=" (the item shape of x_train)")
        labels = np.concatenate([self.y_train, self.y_test])
        self.num_classes = checks.integer("num_classes", self.num_classes,
                                          minimum=int(labels.max()) + 1 if labels.size else 1, where=where)
        if self.levels is not None:
            self.levels = checks.integer("levels", self.levels, minimum=2, where=where)

    @property
    def image_shape(self):
        return tuple(self.x_train.shape[1:])


def scale_to_unit_interval(pixels, max_value):
    """x = 2 p / p_max - 1: maps integer intensities 0..p_max to [-1, 1] (float32), p_max + 1 levels."""
    max_value = checks.integer("max_value", max_value, minimum=1, where="scale_to_unit_interval")
    checks.array_like("pixels", pixels, "scale_to_unit_interval")
    if np.dtype(pixels.dtype).kind not in "iuf":
        raise TypeError(f"scale_to_unit_interval: pixels must hold intensities 0..max_value, got dtype {pixels.dtype}")
    if pixels.size and not (float(pixels.min()) >= 0 and float(pixels.max()) <= max_value):
        raise ValueError(f"scale_to_unit_interval: pixels must lie in 0..max_value = 0..{max_value}, got "
                         f"{pixels.min()}..{pixels.max()}")
    return (pixels.astype(np.float32) * np.float32(2.0 / max_value) - np.float32(1.0))


def train_test_split(x, y, test_fraction, seed):
    """Split by one seeded permutation: the last round(test_fraction N) shuffled items are the test set."""
    test_fraction = checks.real("test_fraction", test_fraction, above=0.0, below=1.0, where="train_test_split")
    checks.batch("train_test_split", x=x, y=y)
    seed = _seed(seed, "train_test_split")
    n_test = int(round(test_fraction * len(x)))
    if not 1 <= n_test <= len(x) - 1:
        raise ValueError(f"train_test_split: test_fraction {test_fraction} of {len(x)} items gives {n_test} test "
                         f"and {len(x) - n_test} training items; both sets need at least one")
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[:-n_test], order[-n_test:]
    return x[train], y[train], x[test], y[test]


def _seed(seed, where):
    """A seed: an integer >= 0 (None would draw fresh entropy: an unreproducible run)."""
    return checks.integer("seed", seed, minimum=0, where=where)


def digits(test_fraction=0.2, seed=0):
    """The 8x8 digits of scikit-learn (UCI optical digits), (N, 1, 8, 8) in [-1, 1], 10 classes."""
    seed = _seed(seed, "digits")
    from sklearn.datasets import load_digits
    bunch = load_digits()
    max_value = 16  # pixel values 0..16: 17 levels
    x = scale_to_unit_interval(bunch.images, max_value)[:, None]  # (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    return ImageDataset("digits", *train_test_split(x, y, test_fraction, seed), num_classes=10,
                        levels=max_value + 1)


# ---------------------------------------------------------------- IDX files (MNIST format)

IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class IDXError(ValueError):
    """A file is not a well-formed IDX file."""


def parse_idx(buffer, source="<bytes>"):
    """Decode IDX bytes: magic (0, 0, dtype code, ndim), ndim big-endian uint32 sizes, then the data."""
    checks.instance("buffer", buffer, (bytes, bytearray, memoryview), "bytes", "parse_idx")
    if len(buffer) < 4:
        raise IDXError(f"{source}: {len(buffer)} bytes is too short for an IDX header (need at least 4)")
    zero0, zero1, code, ndim = buffer[:4]
    if zero0 != 0 or zero1 != 0:
        raise IDXError(f"{source}: bad magic number {bytes(buffer[:4]).hex()} (the first two bytes must be 0)")
    if code not in IDX_DTYPES:
        raise IDXError(f"{source}: unknown IDX data type code 0x{code:02X}; "
                       f"known: {', '.join(f'0x{c:02X}' for c in IDX_DTYPES)}")
    if ndim == 0:
        raise IDXError(f"{source}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(buffer) < header:
        raise IDXError(f"{source}: file ends inside the header ({len(buffer)} bytes, header needs {header})")
    shape = tuple(int(n) for n in np.frombuffer(buffer, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header + math.prod(shape) * dtype.itemsize
    if len(buffer) != expected:
        raise IDXError(f"{source}: header says shape {shape} of {dtype.name} ({expected} bytes in all) "
                       f"but the file has {len(buffer)} bytes")
    data = np.frombuffer(buffer, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def read_idx(path):
    """Read an IDX file (gzip-compressed when the name ends in .gz) into a native-endian array."""
    checks.path("path", path, "read_idx")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return parse_idx(f.read(), source=str(path))


def write_idx(path, array):
    """Write `array` as an IDX file (the inverse of read_idx; used by tests and to export data)."""
    checks.path("path", path, "write_idx")
    checks.array_like("array", array, "write_idx")
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise TypeError(f"write_idx: IDX cannot store an array of dtype {array.dtype}; use one of "
                        f"{sorted(str(d) for d in codes)}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"write_idx: IDX stores an array of 1 to 255 dimensions, got shape {array.shape}")
    header = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = array.astype(IDX_DTYPES[codes[native]]).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + payload)


MNIST_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
               "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def _find_idx(root, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{stem}[.gz] not found in {root!r}; MNIST and Fashion-MNIST need the four files "
                            f"{', '.join(MNIST_FILES.values())}")


def mnist(root, name="mnist"):
    """MNIST or Fashion-MNIST (same file names) from a folder of IDX files: (N, 1, 28, 28) in [-1, 1]."""
    checks.path("root", root, "mnist")
    checks.one_of("name", name, ("mnist", "fashion-mnist"), "mnist")
    parts = {key: read_idx(_find_idx(root, stem)) for key, stem in MNIST_FILES.items()}
    for split in ("train", "test"):
        images, labels = parts["x_" + split], parts["y_" + split]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise IDXError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match "
                           "(expected (N, H, W) and (N,))")
    max_value = 255  # 8-bit pixels: 256 levels
    return ImageDataset(name, scale_to_unit_interval(parts["x_train"], max_value)[:, None],
                        parts["y_train"].astype(np.int64), scale_to_unit_interval(parts["x_test"], max_value)[:, None],
                        parts["y_test"].astype(np.int64), num_classes=10, levels=max_value + 1)


# ---------------------------------------------------------------- procedural shapes

SHAPE_NAMES = ("disc", "square", "triangle")


def draw_shape(kind, size, centre, radius):
    """A binary (size, size) image of one filled shape: disc |p - c| <= r, square |p - c|_inf <= r,
    or the upward triangle with apex c - (0, r) and base on row c_y + r."""
    checks.one_of("kind", kind, SHAPE_NAMES, "draw_shape")
    size = checks.integer("size", size, minimum=1, where="draw_shape")
    radius = checks.real("radius", radius, above=0.0, where="draw_shape")
    if not isinstance(centre, (tuple, list, np.ndarray)) or len(centre) != 2:
        raise TypeError(f"draw_shape: centre must be a pair (row, column), got {centre!r:.40}")
    centre = tuple(checks.real("centre", c, where="draw_shape") for c in centre)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dy, dx = rows - centre[0], cols - centre[1]
    if kind == "disc":
        return dx ** 2 + dy ** 2 <= radius ** 2
    if kind == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= radius
    if kind == "triangle":
        depth = (dy + radius) / (2 * radius)  # 0 at the apex, 1 at the base
        return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= depth * radius)
    raise ValueError(f"unknown shape {kind!r}; expected one of {SHAPE_NAMES}")


def shapes(n=1500, size=16, test_fraction=0.2, seed=0):
    """n random discs, squares and triangles (label = index in SHAPE_NAMES), (n, 1, size, size) in {-1, 1}."""
    n = checks.integer("n", n, minimum=2, where="shapes")
    size = checks.integer("size", size, minimum=6, where="shapes")
    seed = _seed(seed, "shapes")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPE_NAMES), size=n)
    images = np.empty((n, 1, size, size), dtype=np.float32)
    for i, label in enumerate(labels):
        radius = rng.uniform(0.2, 0.35) * size
        centre = rng.uniform(radius, size - radius, size=2)
        images[i, 0] = np.where(draw_shape(SHAPE_NAMES[label], size, centre, radius), 1.0, -1.0)
    return ImageDataset("shapes", *train_test_split(images, labels.astype(np.int64), test_fraction, seed),
                        num_classes=len(SHAPE_NAMES), levels=2)


def load_images(name, root=None, seed=0):
    """A data set by name: 'digits' (default), 'shapes', or 'mnist' / 'fashion-mnist' (IDX files in root)."""
    checks.one_of("name", name, ("digits", "shapes", "mnist", "fashion-mnist"), "load_images")
    if root is not None:
        checks.path("root", root, "load_images")
    if name == "digits":
        return digits(seed=seed)
    if name == "shapes":
        return shapes(seed=seed)
    if name in ("mnist", "fashion-mnist"):
        if root is None:
            raise ValueError(f"load_images: dataset {name!r} needs root, the folder of its IDX files (--data-root)")
    return mnist(root, name)


# ---------------------------------------------------------------- toy 2-D point clouds

def _toy_args(where, n, noise, seed, noise_name="noise"):
    """n >= 1 points, a noise scale >= 0 and a seed of a point cloud."""
    return (checks.integer("n", n, minimum=1, where=where), checks.real(noise_name, noise, minimum=0.0, where=where),
            _seed(seed, where))


def two_moons(n, noise=0.05, seed=0):
    """Two interleaved half circles: (cos s, sin s) and (1 - cos s, 1/2 - sin s), s ~ U[0, pi], plus noise.
    Returns points (n, 2) float32 and the moon label (n,)."""
    n, noise, seed = _toy_args("two_moons", n, noise, seed)
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, size=n)
    s = rng.uniform(0.0, np.pi, size=n)
    x = np.where(label == 0, np.cos(s), 1.0 - np.cos(s))
    y = np.where(label == 0, np.sin(s), 0.5 - np.sin(s))
    points = np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))
    return points.astype(np.float32), label.astype(np.int64)


def swiss_roll(n, noise=0.05, seed=0):
    """The 2-D swiss roll s (cos s, sin s) / 3pi with s ~ U[1.5 pi, 4.5 pi], plus noise; label-free (n, 2)."""
    n, noise, seed = _toy_args("swiss_roll", n, noise, seed)
    rng = np.random.default_rng(seed)
    s = rng.uniform(1.5 * np.pi, 4.5 * np.pi, size=n)
    points = np.stack([s * np.cos(s), s * np.sin(s)], axis=1) / (3 * np.pi)
    return (points + noise * rng.standard_normal((n, 2))).astype(np.float32)


def eight_gaussians(n, std=0.05, radius=1.0, seed=0):
    """A mixture of 8 equal Gaussians centred at radius (cos 2 pi k/8, sin 2 pi k/8); returns (n, 2), labels k."""
    n, std, seed = _toy_args("eight_gaussians", n, std, seed, "std")
    radius = checks.real("radius", radius, above=0.0, where="eight_gaussians")
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 8, size=n)
    centres = radius * np.stack([np.cos(2 * np.pi * k / 8), np.sin(2 * np.pi * k / 8)], axis=1)
    return (centres + std * rng.standard_normal((n, 2))).astype(np.float32), k.astype(np.int64)


POINT_SETS = {"two-moons": two_moons, "swiss-roll": swiss_roll, "eight-gaussians": eight_gaussians}
DATASETS = ("digits", "shapes", "mnist", "fashion-mnist", *POINT_SETS)


def points(name, n=10000, test_fraction=0.2, seed=0):
    """A toy 2-D point cloud of POINT_SETS, n points split like the images: x (N, 2) float32, labels (or 0)."""
    if name not in POINT_SETS:
        raise ValueError(f"points: unknown point set {name!r}; name must be one of {list(POINT_SETS)}")
    drawn = POINT_SETS[name](n, seed=seed)
    x, y = drawn if isinstance(drawn, tuple) else (drawn, np.zeros(n, dtype=np.int64))
    return ImageDataset(name, *train_test_split(x, y, test_fraction, seed), num_classes=int(y.max()) + 1)


def load_dataset(name, root=None, seed=0):
    """Any data set of DATASETS by name: a point cloud of POINT_SETS, else `load_images`."""
    checks.one_of("name", name, DATASETS, "load_dataset")
    if root is not None:
        checks.path("root", root, "load_dataset")
    return points(name, seed=seed) if name in POINT_SETS else load_images(name, root, seed)


# ---------------------------------------------------------------- batches

class BatchStream:
    """Endless shuffled mini-batches of indices into n items, a pure function of (seed, step).

    Epoch e visits permutation(seed, e) in consecutive blocks of batch_size (a short last block is
    dropped), so `indices(step)` needs no state and a resumed run gets the same batches.
    """

    def __init__(self, n, batch_size, seed=0):
        n = checks.integer("n", n, minimum=1, where="BatchStream")
        batch_size = checks.integer("batch_size", batch_size, minimum=1, maximum=n, where="BatchStream")
        self.n, self.batch_size, self.seed = n, batch_size, _seed(seed, "BatchStream")
        self.batches_per_epoch = self.n // self.batch_size
        self._epoch, self._order = None, None

    def indices(self, step):
        epoch, k = divmod(int(step), self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._order[k * self.batch_size:(k + 1) * self.batch_size]


def iterate_batches(arrays, batch_size, seed=0, shuffle=True, drop_last=False):
    """One pass over aligned arrays in mini-batches (seeded shuffle); yields tuples of slices."""
    where = "iterate_batches"
    if not isinstance(arrays, (tuple, list)) or not arrays:
        raise TypeError(f"{where}: arrays must be a non-empty tuple or list of arrays, got {type(arrays).__name__}")
    checks.batch(where, **{f"arrays[{i}]": a for i, a in enumerate(arrays)})
    n = len(arrays[0])
    batch_size = checks.integer("batch_size", batch_size, minimum=1, where=where)
    seed = _seed(seed, where)
    shuffle, drop_last = checks.boolean("shuffle", shuffle, where), checks.boolean("drop_last", drop_last, where)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield tuple(a[idx] for a in arrays)
