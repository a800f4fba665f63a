"""Cache entries memory-mapped in place: the arrays of an uncompressed ``.npz`` as ``np.memmap``.

``np.savez`` stores each array as an ``.npy`` member of a zip file without compression, so the
member's bytes lie contiguous in the file after its local zip header and its ``.npy`` header.
Mapping them read-only costs no RAM until a crop touches the pages; the pages are file-backed
(the kernel may drop and re-read them) and shared by every process that maps the same file:
DataLoader workers and the ranks of a ``torchrun`` job hold one copy between them.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

#: Size of a zip local file header before the member's name and extra field.
_LOCAL_HEADER = 30


def member_memmap(path: Path, name: str) -> npt.NDArray[Any] | None:
    """Memory-map the array ``name`` stored uncompressed in the ``.npz`` file ``path``.

    ``None`` when it cannot be mapped (a compressed member, an unusual ``.npy`` header or an
    object dtype): the caller reads it instead.
    """
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with path.open("rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(_LOCAL_HEADER)
        if len(local) != _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + _LOCAL_HEADER + name_len + extra_len)
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            return None
        offset = handle.tell()
    if dtype.hasobject:
        return None
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
    )


def cached_arrays(
    path: Path, mmap: bool = True
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], dict[str, Any]]:
    """The image, label and meta document of one cache entry; arrays mapped when ``mmap``."""
    with np.load(path) as data:
        meta: dict[str, Any] = json.loads(str(data["meta"]))
        if not mmap:
            return data["image"], data["label"], meta
    image = member_memmap(path, "image")
    label = member_memmap(path, "label")
    if image is None or label is None:  # not mappable: read it
        with np.load(path) as data:
            return data["image"], data["label"], meta
    return image, label, meta
