"""Checkpoints in the safetensors format, written atomically, never pickled (docs/training.md §9).

File layout (the public safetensors format, written here by hand):

    [8 bytes: header length n, little-endian uint64]
    [n bytes: JSON header, space-padded to a multiple of 8]
        {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
         "__metadata__": {"<key>": "<string>", ...}}
    [the tensors' raw little-endian C-order bytes, back to back; offsets count from here]

A training checkpoint stores the model's parameters under "params.<name>", the EMA copy under
"ema.<name>", the optimiser state under "optim.<name>", and everything else (step, config, metric
history, RNG seeds) as JSON in __metadata__["minidiff"]. Writing goes to a temporary file in the
same folder, is fsync'ed, then renamed over the target with os.replace, so a crash never leaves a
half-written checkpoint under the real name.
"""
import json
import os
import tempfile

import numpy as np

from minidiff.backend import to_numpy

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
          "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_CODES = {np.dtype(v): k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 2 ** 20
METADATA_KEY = "minidiff"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not valid safetensors."""


# ---------------------------------------------------------------- raw safetensors


def _dtype_code(name, array):
    code = _CODES.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype)
    if code is None:
        raise TypeError(f"tensor {name!r}: dtype {array.dtype} cannot be stored; use one of "
                        f"{sorted(str(np.dtype(v)) for v in DTYPES.values())}")
    return code


def encode(tensors, metadata=None):
    """The safetensors bytes of {name: array} with string metadata {key: str}."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"tensor names must be non-empty strings other than __metadata__, got {name!r}")
        array = to_numpy(tensors[name])
        code = _dtype_code(name, array)
        raw = np.ascontiguousarray(array, dtype=np.dtype(DTYPES[code])).tobytes()
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def decode(buffer, source="<bytes>"):
    """({name: numpy array}, metadata dict) from safetensors bytes; every offset and size is validated."""
    if len(buffer) < 8:
        raise CheckpointError(f"{source}: {len(buffer)} bytes is too short for a safetensors file")
    n = int.from_bytes(buffer[:8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > len(buffer):
        raise CheckpointError(f"{source}: header length {n} does not fit a file of {len(buffer)} bytes "
                              "(truncated, or not a safetensors file)")
    try:
        header = json.loads(bytes(buffer[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{source}: the header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{source}: the header must be a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    data = memoryview(buffer)[8 + n:]
    tensors, spans = {}, []
    for name, entry in header.items():
        tensors[name], span = _decode_tensor(name, entry, data, source)
        spans.append(span)
    _check_coverage(sorted(spans), len(data), source)
    return tensors, metadata


def _decode_tensor(name, entry, data, source):
    try:
        dtype = np.dtype(DTYPES[entry["dtype"]])
        shape = tuple(int(s) for s in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{source}: tensor {name!r} has a malformed entry {entry!r} (need dtype in "
                              f"{sorted(DTYPES)}, shape and data_offsets)") from None
    if any(s < 0 for s in shape) or not 0 <= begin <= end <= len(data):
        raise CheckpointError(f"{source}: tensor {name!r}: shape {shape} / offsets [{begin}, {end}] are "
                              f"invalid for a data section of {len(data)} bytes")
    if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise CheckpointError(f"{source}: tensor {name!r}: {end - begin} bytes do not hold shape {shape} "
                              f"of {entry['dtype']}")
    array = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True), (begin, end)


def _check_coverage(spans, size, source):
    """The tensors' byte ranges must tile the data section exactly: no gaps, no overlaps."""
    position = 0
    for begin, end in spans:
        if begin != position:
            raise CheckpointError(f"{source}: tensor data {'overlaps' if begin < position else 'has a gap'} "
                                  f"at byte {min(begin, position)}")
        position = end
    if position != size:
        raise CheckpointError(f"{source}: {size - position} bytes after the last tensor (corrupt file)")


def atomic_write_bytes(path, payload):
    """Write bytes to `path` atomically: temp file in the same folder, fsync, os.replace, fsync folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_file(path, tensors, metadata=None):
    """Write {name: array} (+ string metadata) to `path` as safetensors, atomically."""
    atomic_write_bytes(path, encode(tensors, metadata))


def load_file(path):
    """({name: numpy array}, metadata) from a safetensors file, validated."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    with open(path, "rb") as f:
        return decode(f.read(), source=str(path))


# ---------------------------------------------------------------- training checkpoints

GROUPS = ("params", "ema", "optim")


def save_checkpoint(path, params, state, ema=None, optim=None):
    """One file holding params / EMA / optimiser arrays ({name: array} each) and JSON-able `state`."""
    tensors = {}
    for group, arrays in zip(GROUPS, (params, ema, optim)):
        for name, array in (arrays or {}).items():
            tensors[f"{group}.{name}"] = array
    save_file(path, tensors, {METADATA_KEY: json.dumps(state, allow_nan=True)})


def load_checkpoint(path):
    """(groups, state): groups maps 'params' / 'ema' / 'optim' to {name: array}; state is the JSON dict."""
    tensors, metadata = load_file(path)
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: not a minidiff training checkpoint (no __metadata__[{METADATA_KEY!r}])")
    groups = {group: {} for group in GROUPS}
    for key, array in tensors.items():
        group, _, name = key.partition(".")
        if group not in groups or not name:
            raise CheckpointError(f"{path}: unexpected tensor {key!r} (names start with {GROUPS})")
        groups[group][name] = array
    return groups, json.loads(metadata[METADATA_KEY])
