"""safetensors files, written atomically and read with every length and offset checked.

A safetensors file is ``u64 N`` (little endian), ``N`` bytes of JSON header
(``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}``,
padded with spaces to a multiple of 8), then the tensors' bytes, back to back.
Nothing in it can run code, unlike a pickle.

Writing streams each tensor's bytes straight from its storage (no second copy
of the bundle in memory) into a temporary file in the target folder, fsyncs
it, then ``os.replace``-s it over the target and fsyncs the folder: a crash or
a full disk at any point leaves either the old file or the new one, never a
mix. Several files are written in two phases (every temporary first, then the
renames), so a failure while writing any of them replaces none.

Reading checks the header before any tensor is built: the header length
against the file size, the JSON, every dtype, shape and offset range, and
that the ranges tile the data area exactly. Every problem is a
:class:`~adaptlang.errors.BundleError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import torch

from adaptlang.tempfiles import make_temp, remove_stale_temps
from adaptlang.errors import BundleError, Diagnostic
from adaptlang.limits import BUNDLE_MAX_HEADER_BYTES, BUNDLE_MAX_JSON_DEPTH

__all__ = [
    "DTYPES", "SafetensorsHeader", "TensorEntry", "check_finite", "commit_files", "make_folder", "read_header",
    "read_tensors", "hash_tensors", "tensor_bytes", "tensor_sha256", "write_files",
]

#: safetensors dtype names <-> torch dtypes (the ones bundles and PEFT adapters use).
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}

#: A header larger than this is not a bundle (safetensors' own limit is 100 MB).
MAX_HEADER = BUNDLE_MAX_HEADER_BYTES


def _error(path: Path | str, message: str, hint: str | None = None, notes: tuple[str, ...] = ()) -> BundleError:
    return BundleError(Diagnostic(message, obj=str(path), hint=hint, notes=notes))


# ------------------------------------------------------------------ tensors as bytes
def _as_bytes_view(tensor: torch.Tensor) -> memoryview:
    """Returns the tensor's bytes, little endian, C order, without copying when already contiguous on CPU."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())  # (numel * itemsize,)


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Returns how many bytes a tensor takes in a safetensors file."""
    return tensor.numel() * tensor.element_size()


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Returns the sha256 of the bytes a tensor is stored as (dtype and layout included)."""
    return hashlib.sha256(_as_bytes_view(tensor)).hexdigest()


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Returns :func:`tensor_sha256` of every tensor, computed on all cores.

    hashlib releases the GIL while it hashes a large buffer, so threads hash
    several tensors at once; for a 7B-shaped LoRA bundle (160 MB) this is
    most of what reading one costs.
    """
    workers = min(len(tensors), os.cpu_count() or 1)
    if workers <= 1:
        return {key: tensor_sha256(value) for key, value in tensors.items()}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = pool.map(tensor_sha256, tensors.values())
        return dict(zip(tensors, digests))


# ------------------------------------------------------------------ writing
def _header_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """Returns the JSON header (space padded to 8 bytes); tensors are laid out in key order."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key in sorted(tensors):
        tensor = tensors[key]
        if tensor.dtype not in _NAMES:
            raise BundleError(Diagnostic(f"tensor '{key}' has dtype {tensor.dtype}, which bundles cannot store",
                                         obj=key))
        size = tensor_bytes(tensor)
        header[key] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)


def write_safetensors(handle: BinaryIO, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Writes a safetensors stream: header, then each tensor's bytes in key order."""
    header = _header_bytes(tensors, metadata)
    handle.write(struct.pack("<Q", len(header)))
    handle.write(header)
    for key in sorted(tensors):
        handle.write(_as_bytes_view(tensors[key]))


def _fsync_folder(folder: Path) -> None:
    """Makes a rename durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


Writer = Callable[[BinaryIO], None]


def make_folder(folder: str | Path) -> Path:
    """Creates an output folder (and its parents) or raises a BundleError naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(Diagnostic(f"cannot create the folder: {exc.strerror or exc}", obj=str(folder))) from None
    return folder


def write_files(jobs: list[tuple[Path, Writer]]) -> list[Path]:
    """Writes several files atomically: all temporaries first, then every rename.

    Args:
        jobs: ``(target path, writer)``; each writer writes the whole content
            to the binary handle it gets.

    Returns:
        The targets, in order.

    Raises:
        BundleError: A folder that cannot be written, or a write that failed
            (a full disk): no target is changed then, and no temporary is left.

    Stale temporaries of earlier, killed writes into the same folders are
    removed first (:func:`~adaptlang.tempfiles.remove_stale_temps`).
    """
    for target, _ in jobs:
        if target.exists() and not target.is_file():  # renaming over a device would replace it
            raise _error(target, "is not a regular file (a device, a FIFO, ...)",
                         hint="nothing was written; a bundle replaces the file it writes: name a file")
    for folder in sorted({target.parent for target, _ in jobs}, key=str):
        remove_stale_temps(folder)  # what killed saves left here (only ours, only dead ones)
    temps: list[tuple[str, Path]] = []
    current = Path(".")
    try:
        try:
            for current, writer in jobs:
                temps.append((_write_temp(current, writer), current))
        except OSError as exc:
            raise _error(current, f"cannot write: {exc.strerror or exc}",
                         hint="nothing was replaced; free some space or pick another folder") from None
        try:
            commit_files(temps)
        except OSError as exc:
            raise _error(current, f"cannot rename the written file into place: {exc.strerror or exc}") from None
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [target for target, _ in jobs]


def _write_temp(target: Path, writer: Writer) -> str:
    """Writes one temporary file next to ``target`` and fsyncs it; returns its name."""
    fd, tmp = make_temp(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def commit_files(temps: list[tuple[str, Path]]) -> None:
    """Renames each temporary over its target, then fsyncs the folders."""
    for tmp, target in temps:
        os.replace(tmp, target)
    for folder in sorted({target.parent for _, target in temps}, key=str):
        _fsync_folder(folder if str(folder) else Path("."))


# ------------------------------------------------------------------ reading
class TensorEntry:
    """One tensor as the header describes it.

    Attributes:
        dtype: The torch dtype.
        shape: Its shape.
        start, end: Byte range within the data area.
    """

    __slots__ = ("dtype", "shape", "start", "end")

    def __init__(self, dtype: torch.dtype, shape: tuple[int, ...], start: int, end: int):
        self.dtype, self.shape, self.start, self.end = dtype, shape, start, end


class SafetensorsHeader:
    """A checked safetensors header.

    Attributes:
        path: The file.
        metadata: ``__metadata__`` (str -> str), empty if absent.
        tensors: Name -> :class:`TensorEntry`, in file order.
        header_size: Bytes of JSON header (after the 8-byte length).
        file_size: Bytes of the whole file.
    """

    def __init__(self, path: Path, metadata: dict[str, str], tensors: dict[str, TensorEntry],
                 header_size: int, file_size: int):
        self.path, self.metadata, self.tensors = path, metadata, tensors
        self.header_size, self.file_size = header_size, file_size


def read_header(path: Path | str) -> SafetensorsHeader:
    """Reads and checks a safetensors header without reading tensor data.

    Raises:
        BundleError: A missing file, or anything that is not a well-formed
            safetensors file (too short, a header length past the end, bad
            JSON, unknown dtypes, offsets that overlap, leave gaps or run past
            the end of the file), naming the file.
    """
    path = Path(path)
    if not os.path.isfile(path):  # os.path's: False (not OSError) for a name too long
        raise _error(path, "no such file" if not os.path.lexists(path) else "not a regular file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise _error(path, f"not a safetensors file: only {size} bytes")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER:
                raise _error(path, f"not a safetensors file: the header claims {length:,} bytes, more than "
                                   f"the limit BUNDLE_MAX_HEADER_BYTES = {MAX_HEADER:,}")
            if length > size - 8:
                raise _error(path, f"not a safetensors file, or truncated: the header claims {length:,} bytes "
                                   f"but the file has {size - 8:,} after the length field")
            raw = handle.read(length)
    except OSError as exc:
        raise _error(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except RecursionError:  # json recurses per nesting level; a hostile header nests 1e5 deep
        raise _error(path, f"malformed safetensors header: nested deeper than {BUNDLE_MAX_JSON_DEPTH} levels "
                           f"(limit BUNDLE_MAX_JSON_DEPTH = {BUNDLE_MAX_JSON_DEPTH})") from None
    except (UnicodeDecodeError, ValueError):
        raise _error(path, "not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise _error(path, "not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _error(path, "malformed safetensors header: __metadata__ must map strings to strings")
    tensors = {name: _check_entry(path, name, info) for name, info in header.items()}
    _check_tiling(path, tensors, size - 8 - length)
    return SafetensorsHeader(path, metadata, tensors, length, size)


def _check_entry(path: Path, name: str, info: Any) -> TensorEntry:
    """Checks one tensor entry: dtype, shape, offsets and that the byte count fits the shape."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise _error(path, f"malformed safetensors header: entry '{name}' lacks dtype, shape or data_offsets")
    dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise _error(path, f"tensor '{name}' has an unsupported dtype {info['dtype']!r}",
                     notes=(f"supported: {', '.join(DTYPES)}",))
    shape, offsets = info["shape"], info["data_offsets"]
    # Types first: `"shape": 5` or `"data_offsets": null` must not reach the unpacking below.
    lists = isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
    ints = lists and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in [*shape, *offsets])
    if not ints:
        raise _error(path, f"malformed safetensors header: bad shape or offsets for '{name}'",
                     notes=(f"shape: {_short(shape)}, data_offsets: {_short(offsets)}",))
    start, end = offsets
    numel = 1
    for dim in shape:
        numel *= dim
    if end - start != numel * torch.empty((), dtype=dtype).element_size():
        raise _error(path, f"malformed safetensors header: '{name}' has shape {tuple(shape)} "
                           f"but {end - start} bytes")
    return TensorEntry(dtype, tuple(shape), start, end)


def _short(value: Any) -> str:
    """A JSON value shown in a message, cut short (a hostile header may hold megabytes)."""
    text = json.dumps(value) if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _check_tiling(path: Path, tensors: dict[str, TensorEntry], data_size: int) -> None:
    """Checks that the byte ranges cover the data area exactly, without overlap."""
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if entry.start != position:
            raise _error(path, f"malformed safetensors header: tensor '{name}' starts at byte {entry.start}, "
                               f"expected {position} (overlap or gap)")
        position = entry.end
    if position > data_size:
        raise _error(path, f"truncated: the tensors need {position:,} bytes of data, the file holds {data_size:,}",
                     hint="the file was cut short (an interrupted copy or download?)")
    if position < data_size:
        raise _error(path, f"malformed safetensors file: {data_size - position:,} bytes after the last tensor")


def check_finite(where: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuses floating tensors holding NaN or infinity: loaded, they would damage a model for good.

    One ``isfinite().all()`` per tensor (a pass over bytes already read; about
    as cheap as hashing them). Integer tensors (sparse positions) are always finite.

    Raises:
        BundleError: Naming the file and the first tensor with a non-finite value.
    """
    for key, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise _error(where, f"tensor '{key}' holds {bad:,} NaN or infinite value(s)",
                             hint="the values were damaged (a diverged run, or an edited file); "
                                  "load an earlier, intact bundle")


def read_tensors(header: SafetensorsHeader) -> dict[str, torch.Tensor]:
    """Reads every tensor of a checked file (CPU, fresh storage, in file order).

    Raises:
        BundleError: The file changed or vanished since its header was read.
    """
    path = header.path
    tensors: dict[str, torch.Tensor] = {}
    try:
        with open(path, "rb") as handle:
            base = 8 + header.header_size
            for name, entry in header.tensors.items():
                handle.seek(base + entry.start)
                size = entry.end - entry.start
                data = bytearray(handle.read(size))
                if len(data) != size:
                    raise _error(path, f"truncated while reading tensor '{name}'")
                flat = torch.frombuffer(data, dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)
                tensors[name] = flat.view(entry.dtype).reshape(entry.shape)
    except OSError as exc:
        raise _error(path, f"cannot read: {exc.strerror or exc}") from None
    return tensors
