"""Size and shape limits applied to every package before anything else reads it."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class PackageLimits:
    """Upper bounds for one package. The defaults suit models up to tens of MB."""

    max_archive_bytes: int = 64 * MIB
    max_member_bytes: int = 64 * MIB
    max_total_uncompressed_bytes: int = 128 * MIB
    max_compression_ratio: float = 100.0
    max_manifest_bytes: int = 1 * MIB
    max_envelope_bytes: int = 2 * MIB
    max_graph_bytes: int = 64 * MIB
    max_nodes: int = 20_000
    max_initializer_bytes: int = 64 * MIB
    min_opset: int = 13
    max_opset: int = 21
    min_ir_version: int = 7
    max_ir_version: int = 10

    def __post_init__(self) -> None:
        for name in (
            "max_archive_bytes",
            "max_member_bytes",
            "max_total_uncompressed_bytes",
            "max_manifest_bytes",
            "max_envelope_bytes",
            "max_graph_bytes",
            "max_nodes",
            "max_initializer_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"PackageLimits.{name} must be >= 1")
        if self.max_archive_bytes >= 2**32 - 1 or self.max_member_bytes >= 2**32 - 1:
            raise ValueError("package archives are limited to 4 GiB (no ZIP64)")
        if not self.max_compression_ratio >= 1.0:
            raise ValueError("PackageLimits.max_compression_ratio must be >= 1")
        if not 1 <= self.min_opset <= self.max_opset:
            raise ValueError("PackageLimits: opset range is empty")
