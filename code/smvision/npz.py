""".npz bodies (numpy.savez / savez_compressed): named arrays, read without pickles and
without zip bombs.

At most MAX_NPZ_BYTES in all, counted from the sizes the members declare and held to
while unpacking: no member is ever inflated past its declared size. Stored members are
read in place (views of the body, smvision.npy); deflated ones are inflated with a hard
cap; bzip2, lzma and encrypted members are refused (zipfile's readers would inflate those
without a bound, and numpy never writes them).
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from typing import Any

from smvision.errors import bad_request, too_large
from smvision.npy import load_npy
from smvision.quoting import quote

#: the most bytes an .npz body's arrays may unpack to (savez_compressed could hide more)
MAX_NPZ_BYTES = 64 * 1024 * 1024


def read_npz(data: bytes) -> dict[str, Any]:
    """The body's arrays by name (".npy" dropped). Arrays of 3 or more dimensions (an
    embedding, a mask) stay arrays; the rest become what JSON would give (0-d arrays
    numbers or strings, others lists). A 400 or 413 says what is wrong."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
        if sum(m.file_size for m in members) > MAX_NPZ_BYTES:
            raise too_large(f"the .npz body unpacks to more than {MAX_NPZ_BYTES:,} bytes")
        params: dict[str, Any] = {}
        for member in members:
            name = f"the .npz member {quote(member.filename)}"
            array = load_npy(_member(member, data, name), name)
            params[member.filename.removesuffix(".npy")] = array if array.ndim >= 3 else array.tolist()
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError) as exc:
        raise bad_request(f"the body is not an .npz of plain arrays (numpy.savez): {quote(str(exc))}") from None
    if not params:
        raise bad_request("the .npz body holds no arrays")
    return params


def _member(member: zipfile.ZipInfo, data: bytes, name: str) -> bytes | memoryview:
    """A member's bytes. Stored (numpy.savez): a view of the body (no copy, no CRC pass
    over megabytes TCP already checked). Deflated (numpy.savez_compressed): inflated to
    at most its declared size. Anything else is a 400 naming the member."""
    if member.flag_bits & 0x1:
        raise bad_request(f"{name} is encrypted; send the arrays as numpy.savez or numpy.savez_compressed writes them")
    if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        method = zipfile.compressor_names.get(member.compress_type, f"method {member.compress_type}")
        raise bad_request(
            f"{name} is compressed with {method}; only stored members (numpy.savez) and deflate ones "
            "(numpy.savez_compressed) are read"
        )
    if member.compress_type == zipfile.ZIP_STORED:
        return _member_data(member, member.file_size, data)
    return _inflate(_member_data(member, member.compress_size, data), member.file_size, member.CRC, name)


def _member_data(member: zipfile.ZipInfo, length: int, data: bytes) -> memoryview:
    """The `length` bytes after a member's local file header, as a view of the body."""
    offset = member.header_offset
    header = data[offset : offset + 30]  # the local file header, then its name and extra field
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local file header for {member.filename}")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    start = offset + 30 + name_length + extra_length
    if start + length > len(data):
        raise zipfile.BadZipFile(f"{member.filename} runs past the end of the body")
    return memoryview(data)[start : start + length]


def _inflate(compressed: memoryview, size: int, crc: int, name: str) -> bytes:
    """Raw deflate data -> exactly `size` bytes, never producing more than size + 1 (one
    more tells a member that unpacks to more than it declares); CRC-32 checked."""
    inflater = zlib.decompressobj(-15)
    unpacked = inflater.decompress(compressed, size + 1)
    if len(unpacked) > size:
        raise bad_request(f"{name} unpacks to more than the {size:,} bytes its header declares")
    if len(unpacked) < size or not inflater.eof:
        raise zipfile.BadZipFile(f"{name} ends before the {size:,} bytes its header declares")
    if zlib.crc32(unpacked) != crc:
        raise zipfile.BadZipFile(f"bad CRC-32 for {name}")
    return unpacked
