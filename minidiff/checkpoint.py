"""Checkpoints in the safetensors format, written atomically, never pickled (docs/training.md §9).

The bytes are encoded and decoded by the `safetensors` library (its NumPy API), so a file minidiff
writes opens with `safetensors.torch.load_file` and any file the library writes opens here. The format:

    [8 bytes: header length n, little-endian uint64]
    [n bytes: JSON header {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
                           "__metadata__": {"<key>": "<string>", ...}}]
    [the tensors' raw little-endian C-order bytes; offsets count from here]

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
import safetensors
import safetensors.numpy

from minidiff import checks
from minidiff.backend import to_numpy

# The safetensors dtypes that have a NumPy equivalent (BF16 and the float8 kinds have none).
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
          "BOOL": np.bool_, "C64": np.complex64}
METADATA_KEY = "minidiff"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, not valid safetensors, or not what its reader needs."""


# ---------------------------------------------------------------- safetensors bytes


def _storable(name, value):
    if not isinstance(name, str) or not name or name == "__metadata__":
        raise ValueError(f"tensors: names must be non-empty strings other than __metadata__, got {name!r}")
    array = np.asarray(to_numpy(value), order="C")  # the library reads the raw buffer: C order only
    if array.dtype.newbyteorder("=") not in {np.dtype(d) for d in DTYPES.values()}:
        raise TypeError(f"tensors[{name!r}]: dtype {array.dtype} cannot be stored; use one of "
                        f"{sorted(str(np.dtype(d)) for d in DTYPES.values())}")
    return array


def encode(tensors, metadata=None):
    """The safetensors bytes of {name: array} with string metadata {key: str}."""
    checks.instance("tensors", tensors, dict, "a dict {name: array}", "encode")
    if metadata is not None:
        checks.instance("metadata", metadata, dict, "a dict {str: str}", "encode")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError(f"encode: metadata must map str to str, got {metadata!r:.60}")
    return safetensors.numpy.save({name: _storable(name, value) for name, value in tensors.items()},
                                  metadata=dict(metadata) if metadata else None)


def decode(buffer, source="<bytes>"):
    """({name: numpy array}, metadata dict) from safetensors bytes, validated by the library."""
    checks.instance("buffer", buffer, (bytes, bytearray, memoryview), "bytes", "decode")
    try:
        entries = safetensors.deserialize(bytes(buffer))
    except safetensors.SafetensorError as e:
        raise CheckpointError(f"{source}: not a valid safetensors file ({e})") from None
    foreign = {name: entry["dtype"] for name, entry in entries if entry["dtype"] not in DTYPES}
    if foreign:
        raise CheckpointError(f"{source}: tensors {foreign} have dtypes NumPy cannot hold; "
                              f"supported: {sorted(DTYPES)}")
    tensors = {name: np.frombuffer(entry["data"], DTYPES[entry["dtype"]]).reshape(entry["shape"]).copy()
               for name, entry in entries}
    return tensors, _metadata(buffer)


def _metadata(buffer):
    """__metadata__ of a header the library has already validated (its bytes API does not return it)."""
    n = int.from_bytes(buffer[:8], "little")
    return json.loads(bytes(buffer[8:8 + n]).decode("utf-8")).get("__metadata__") or {}


def _temporary_prefix(path, pid):
    """Temp files for `path` are named .<name>.<pid>.<random>.tmp: the writer's process id tells an orphan."""
    return f".{os.path.basename(path)}.{pid}."


def remove_orphaned_temporaries(path):
    """Delete the temp files of `path` left by writers that died mid-save (SIGKILL, power loss); return them.

    A temp file belongs to the process whose id is in its name; it is an orphan when that process no
    longer exists. Files of a live writer (another process saving to the same path) are left alone.
    """
    checks.path("path", path, "remove_orphaned_temporaries")
    folder, stem = os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}."
    removed = []
    for entry in os.listdir(folder) if os.path.isdir(folder) else ():
        pid = entry[len(stem):].split(".", 1)[0]
        if entry.startswith(stem) and entry.endswith(".tmp") and pid.isdigit() and not _alive(int(pid)):
            try:
                os.remove(os.path.join(folder, entry))
                removed.append(entry)
            except FileNotFoundError:  # another process cleaned it first
                pass
    return removed


def _alive(pid):
    """Whether process `pid` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def atomic_write_bytes(path, payload):
    """Write bytes to `path` atomically: temp file in the same folder, fsync, os.replace, fsync folder.

    Temp files that earlier, killed writers left for the same path are removed first.
    """
    checks.path("path", path, "atomic_write_bytes")
    checks.instance("payload", payload, (bytes, bytearray, memoryview), "bytes", "atomic_write_bytes")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_orphaned_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temporary_prefix(path, os.getpid()), suffix=".tmp")
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
    checks.path("path", path, "load_file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    with open(path, "rb") as f:
        return decode(f.read(), source=str(path))


# ---------------------------------------------------------------- training checkpoints

GROUPS = ("params", "ema", "optim")


def save_checkpoint(path, params, state, ema=None, optim=None):
    """One file holding params / EMA / optimiser arrays ({name: array} each) and JSON-able `state`."""
    checks.path("path", path, "save_checkpoint")
    checks.instance("state", state, dict, "a dict", "save_checkpoint")
    tensors = {}
    for group, arrays in zip(GROUPS, (params, ema, optim)):
        if arrays is not None or group == "params":
            checks.instance(group, arrays, dict, "a dict {name: array}", "save_checkpoint")
        for name, array in (arrays or {}).items():
            tensors[f"{group}.{name}"] = array
    try:
        text = json.dumps(state, allow_nan=True)
    except TypeError as e:
        raise TypeError(f"save_checkpoint: state must hold JSON values only ({e})") from None
    save_file(path, tensors, {METADATA_KEY: text})


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
