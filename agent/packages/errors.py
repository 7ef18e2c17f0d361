"""Errors of the package subsystem.

Every refusal of an uploaded or local package is a :class:`PackageRejected` carrying a
stable :class:`RejectionCode`. Its message is written for the remote uploader: it names
the member, field, operator or key at fault and never a local path.
"""

from __future__ import annotations

from enum import StrEnum

from agent.refusal import Refusal


class PackageError(Exception):
    """Base of every error raised by :mod:`agent.packages` and the publisher tools."""


class RejectionCode(StrEnum):
    """Why a package was refused; the value is the stable id sent to the uploader."""

    # -- upload -------------------------------------------------------------------------
    ARCHIVE_TOO_LARGE = "archive_too_large"
    UPLOAD_EXCEEDS_DECLARED_SIZE = "upload_exceeds_declared_size"
    UPLOAD_TRUNCATED = "upload_truncated"
    UPLOAD_DIGEST_MISMATCH = "upload_digest_mismatch"
    # -- archive ------------------------------------------------------------------------
    ARCHIVE_MALFORMED = "archive_malformed"
    ARCHIVE_NOT_CANONICAL = "archive_not_canonical"
    UNSAFE_PATH = "unsafe_path"
    LINK_MEMBER = "link_member"
    SPECIAL_MEMBER = "special_member"
    DUPLICATE_MEMBER = "duplicate_member"
    UNEXPECTED_MEMBER = "unexpected_member"
    MISSING_MEMBER = "missing_member"
    ARCHIVE_BOMB = "archive_bomb"
    UNSUPPORTED_COMPRESSION = "unsupported_compression"
    # -- signature envelope -------------------------------------------------------------
    ENVELOPE_MALFORMED = "envelope_malformed"
    UNSUPPORTED_PAYLOAD_TYPE = "unsupported_payload_type"
    UNSIGNED = "unsigned"
    SIGNATURE_INVALID = "signature_invalid"
    UNKNOWN_KEY = "unknown_key"
    KEY_EXPIRED = "key_expired"
    KEY_REVOKED = "key_revoked"
    KEY_NOT_AUTHORISED = "key_not_authorised"
    # -- manifest -----------------------------------------------------------------------
    MANIFEST_MISMATCH = "manifest_mismatch"
    MANIFEST_NOT_CANONICAL = "manifest_not_canonical"
    MANIFEST_INVALID = "manifest_invalid"
    UNSUPPORTED_FORMAT_VERSION = "unsupported_format_version"
    GRAPH_DIGEST_MISMATCH = "graph_digest_mismatch"
    # -- ONNX ---------------------------------------------------------------------------
    ONNX_MALFORMED = "onnx_malformed"
    ONNX_CHECK_FAILED = "onnx_check_failed"
    ONNX_TOO_LARGE = "onnx_too_large"
    OPSET_UNSUPPORTED = "opset_unsupported"
    CUSTOM_DOMAIN = "custom_domain"
    FUNCTIONS_NOT_ALLOWED = "functions_not_allowed"
    CONTROL_FLOW = "control_flow"
    DISALLOWED_OPERATOR = "disallowed_operator"
    EXTERNAL_DATA = "external_data"
    DISALLOWED_TENSOR = "disallowed_tensor"
    GRAPH_INTERFACE_MISMATCH = "graph_interface_mismatch"
    GRADIENT_SHAPE_MISMATCH = "gradient_shape_mismatch"
    DYNAMIC_SHAPE = "dynamic_shape"
    DATA_DEPENDENT_INDEX = "data_dependent_index"
    # -- local policy -------------------------------------------------------------------
    NAME_NOT_ALLOWED = "name_not_allowed"
    # -- store --------------------------------------------------------------------------
    ROLLBACK = "rollback"
    VERSION_CONFLICT = "version_conflict"

    @property
    def refusal(self) -> Refusal:
        """What the uploader is told: untrusted signers and names are forbidden, a conflict with the
        store is a precondition, anything else is a malformed package."""
        if self in _FORBIDDEN:
            return Refusal.FORBIDDEN
        if self in _PRECONDITION:
            return Refusal.PRECONDITION
        return Refusal.INVALID


_FORBIDDEN = frozenset(
    {
        RejectionCode.UNSIGNED,
        RejectionCode.SIGNATURE_INVALID,
        RejectionCode.UNKNOWN_KEY,
        RejectionCode.KEY_EXPIRED,
        RejectionCode.KEY_REVOKED,
        RejectionCode.KEY_NOT_AUTHORISED,
        RejectionCode.NAME_NOT_ALLOWED,
    }
)
_PRECONDITION = frozenset({RejectionCode.ROLLBACK, RejectionCode.VERSION_CONFLICT})


class PackageRejected(PackageError):  # noqa: N818 (the name the API promises)
    """A package (or upload) is refused; ``message`` is safe to send to the uploader."""

    def __init__(self, code: RejectionCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


class PackageStoreError(PackageError):
    """The package store on disk is unusable (unreadable index, damaged blob, ...)."""


class UnknownPackageError(PackageError):
    """No stored package has this digest."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"no package with digest {digest} in the store")
        self.digest = digest


class DecisionError(PackageError):
    """An approval or rejection cannot be recorded (wrong state) or does not verify."""


class PackageInputError(PackageError):
    """Publisher input (files, fields, keys) is invalid; the person can fix it."""
