"""The package archive: a canonical, uncompressed ZIP file.

Writing: :func:`write_archive` lays the members out in a fixed order with fixed
metadata (see ``docs/package-format.md``), so an archive is a pure function of its
members' bytes.

Reading: :func:`read_archive` never extracts to disk. It refuses, before reading any
member data: archives over the size limit, unsafe names (absolute, ``..``, backslash,
NUL, drive letters), links, device/FIFO/socket/directory entries, duplicate, unexpected
or missing members, encrypted members, declared sizes or compression ratios over the
limits, and any compression method other than *stored*. It then reads each member
(bounded, CRC-checked) and finally requires the archive to be byte-identical to
:func:`write_archive` of those members: trailing or prepended data, extra fields,
timestamps, attributes, comments or member order that differ from the canonical layout
are refused as ``ARCHIVE_NOT_CANONICAL``.
"""

from __future__ import annotations

import io
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from agent.packages.errors import PackageRejected, RejectionCode
from agent.packages.limits import PackageLimits

MANIFEST = "manifest.json"
GRAD = "grad.onnx"
EVAL = "eval.onnx"
MODEL = "model.onnx"
SIGNATURES = "signatures.json"
MEMBER_ORDER: tuple[str, ...] = (MANIFEST, GRAD, EVAL, MODEL, SIGNATURES)
# grad.onnx is required of model packages by their manifest; a plan package has no graph.
REQUIRED_MEMBERS = frozenset({MANIFEST, SIGNATURES})
ROLE_OF_MEMBER: Mapping[str, str] = {GRAD: "grad", EVAL: "eval", MODEL: "model"}

# Fixed metadata of every canonical entry.
_VERSION_NEEDED = 20  # 2.0
_VERSION_MADE_BY = (3 << 8) | 20  # Unix, 2.0
_DOS_TIME = 0  # 00:00:00
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01
_EXTERNAL_ATTR = (stat.S_IFREG | 0o644) << 16
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
_END_RECORD = struct.Struct("<IHHHHIIH")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ArchiveContents:
    """The members of a well-formed archive, as bytes."""

    manifest: bytes
    envelope: bytes
    graphs: Mapping[str, bytes]
    """Graph role (``grad``, ``eval``, ``model``) -> ONNX bytes, for the members present."""


def write_archive(members: Mapping[str, bytes]) -> bytes:
    """The canonical archive holding ``members`` (names from :data:`MEMBER_ORDER`)."""
    unknown = set(members) - set(MEMBER_ORDER)
    if unknown:
        raise ValueError(f"not package members: {sorted(unknown)}")
    out = io.BytesIO()
    central: list[bytes] = []
    for name in MEMBER_ORDER:
        if name not in members:
            continue
        data = members[name]
        encoded = name.encode("ascii")
        crc = zlib.crc32(data)
        offset = out.tell()
        out.write(
            _LOCAL_HEADER.pack(
                0x04034B50,
                _VERSION_NEEDED,
                0,
                zipfile.ZIP_STORED,
                _DOS_TIME,
                _DOS_DATE,
                crc,
                len(data),
                len(data),
                len(encoded),
                0,
            )
        )
        out.write(encoded)
        out.write(data)
        central.append(
            _CENTRAL_HEADER.pack(
                0x02014B50,
                _VERSION_MADE_BY,
                _VERSION_NEEDED,
                0,
                zipfile.ZIP_STORED,
                _DOS_TIME,
                _DOS_DATE,
                crc,
                len(data),
                len(data),
                len(encoded),
                0,
                0,
                0,
                0,
                _EXTERNAL_ATTR,
                offset,
            )
            + encoded
        )
    directory_offset = out.tell()
    directory = b"".join(central)
    out.write(directory)
    out.write(_END_RECORD.pack(0x06054B50, 0, 0, len(central), len(central), len(directory), directory_offset, 0))
    return out.getvalue()


def _reject(code: RejectionCode, message: str) -> NoReturn:
    raise PackageRejected(code, message)


def _check_name(name: str) -> None:
    shown = ascii(name)[:80]
    if (
        not name
        or "\x00" in name
        or "\\" in name
        or name.startswith("/")
        or _DRIVE.match(name)
        or any(part in ("", ".", "..") for part in name.rstrip("/").split("/"))
        or any(ord(ch) < 0x20 for ch in name)
    ):
        _reject(RejectionCode.UNSAFE_PATH, f"archive member name {shown} is not a safe relative path")


def _check_type(info: zipfile.ZipInfo) -> None:
    shown = ascii(info.orig_filename)[:80]
    if info.create_system == 3:  # Unix: the file type is in the high 16 bits
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            _reject(RejectionCode.LINK_MEMBER, f"archive member {shown} is a symbolic link")
        kind = stat.S_IFMT(mode)
        if kind not in (0, stat.S_IFREG):
            _reject(RejectionCode.SPECIAL_MEMBER, f"archive member {shown} is not a regular file")
    if info.external_attr & 0x10 or info.orig_filename.endswith("/"):  # MS-DOS directory bit
        _reject(RejectionCode.SPECIAL_MEMBER, f"archive member {shown} is a directory")


def _open(data: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:  # zipfile raises many types on hostile input
        _reject(RejectionCode.ARCHIVE_MALFORMED, f"not a readable ZIP archive ({type(exc).__name__})")


def read_archive(data: bytes, limits: PackageLimits) -> ArchiveContents:
    """Checks and reads a package archive; raises ``PackageRejected``."""
    if len(data) > limits.max_archive_bytes:
        _reject(
            RejectionCode.ARCHIVE_TOO_LARGE,
            f"the archive has {len(data)} bytes, more than the limit of {limits.max_archive_bytes}",
        )
    archive = _open(data)
    with archive:
        infos = _checked_entries(archive, limits)
        members: dict[str, bytes] = {}
        for info in infos:
            members[info.orig_filename] = _read_member(archive, info)
    if write_archive(members) != data:
        _reject(
            RejectionCode.ARCHIVE_NOT_CANONICAL,
            "the archive's layout or metadata differ from the canonical form of package format v1",
        )
    return ArchiveContents(
        manifest=members[MANIFEST],
        envelope=members[SIGNATURES],
        graphs={ROLE_OF_MEMBER[name]: data for name, data in members.items() if name in ROLE_OF_MEMBER},
    )


def _checked_entries(archive: zipfile.ZipFile, limits: PackageLimits) -> Sequence[zipfile.ZipInfo]:
    infos = archive.infolist()
    seen: set[str] = set()
    for info in infos:
        name = info.orig_filename
        _check_name(name)
        _check_type(info)
        if name in seen:
            _reject(RejectionCode.DUPLICATE_MEMBER, f"archive member {ascii(name)[:80]} appears twice")
        seen.add(name)
        if name not in MEMBER_ORDER:
            _reject(
                RejectionCode.UNEXPECTED_MEMBER,
                f"archive member {ascii(name)[:80]} is not part of the format (allowed: {', '.join(MEMBER_ORDER)})",
            )
        if info.flag_bits & 0x1:
            _reject(RejectionCode.ARCHIVE_MALFORMED, f"archive member {name} is encrypted")
    total = 0
    for info in infos:
        total += info.file_size
        if info.file_size > limits.max_member_bytes or total > limits.max_total_uncompressed_bytes:
            _reject(
                RejectionCode.ARCHIVE_BOMB,
                f"archive members declare {total} bytes uncompressed, over the limits "
                f"({limits.max_member_bytes} per member, {limits.max_total_uncompressed_bytes} in total)",
            )
        if info.file_size / max(info.compress_size, 1) > limits.max_compression_ratio:
            _reject(
                RejectionCode.ARCHIVE_BOMB,
                f"archive member {info.orig_filename} declares a compression ratio "
                f"over {limits.max_compression_ratio:g}",
            )
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            _reject(
                RejectionCode.UNSUPPORTED_COMPRESSION,
                f"archive member {info.orig_filename} is compressed (method {info.compress_type}); "
                "format v1 stores members uncompressed",
            )
    missing = sorted(REQUIRED_MEMBERS - seen)
    if missing:
        _reject(RejectionCode.MISSING_MEMBER, f"the archive lacks {', '.join(missing)}")
    return infos


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        with archive.open(info) as handle:
            content = handle.read(info.file_size + 1)
    except Exception as exc:  # CRC errors, header mismatches, truncation, ...
        _reject(
            RejectionCode.ARCHIVE_MALFORMED,
            f"archive member {info.orig_filename} cannot be read ({type(exc).__name__})",
        )
    if len(content) != info.file_size:
        _reject(RejectionCode.ARCHIVE_MALFORMED, f"archive member {info.orig_filename} has the wrong size")
    return content
