"""lpm's own exception tree.

Library and OS errors are mapped into these once, at the boundary where they happen, so
callers decide on lpm's terms (retry? report? refuse?) and every message names the thing
and the reason.
"""


class LpmError(Exception):
    """Base of every error lpm reports to a person."""


class UnsafeNameError(LpmError):
    """A name, identity field or URI segment that could escape the store or confuse a path."""


class ArchiveError(LpmError):
    """A kubelet checkpoint archive that cannot be ingested as it is."""


class ArchiveIncomplete(ArchiveError):
    """The archive ends before its end-of-archive blocks: still being written, or truncated."""


class ArchiveChanged(ArchiveError):
    """The archive changed while it was being read: the writer had not finished."""


class IdentityError(ArchiveError):
    """The archive's Kubernetes identity is missing, malformed, conflicting or unsafe."""


class ImageError(LpmError):
    """A checkpoint image could not be written (output exists, disk full, bad tag or platform)."""


class StoreError(LpmError):
    """The checkpoint store refused an operation (permissions, full disk, unsafe layout)."""


class StoreUnavailable(StoreError):
    """The store did not answer, or failed on its side (unreachable, timed out, a 5xx, a stale NFS handle):
    it says nothing about the checkpoint's bytes, so what failed is worth trying again once the store is back."""


class UnknownCheckpoint(StoreError):
    """No such checkpoint or artifact in the store."""


class IncompleteCheckpoint(StoreError):
    """The checkpoint has no completion marker, or the marker lists containers that are not there."""


class AlreadyComplete(StoreError):
    """The checkpoint's marker is there already: another writer (an agent, the mover) committed it first."""


class ChecksumMismatch(StoreError):
    """Stored bytes do not hash to what the manifest recorded."""


class Cancelled(LpmError):
    """A blocking operation stopped because the agent is shutting down."""


class ApiError(LpmError):
    """The Kubernetes API answered with an error; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class NotFound(ApiError):
    """404: a positive answer that the object does not exist."""


class Conflict(ApiError):
    """409: a stale resourceVersion, or the object already exists."""


class Gone(ApiError):
    """410: the watch's resourceVersion is too old; relist."""


class Forbidden(ApiError):
    """403: RBAC refuses; retrying will not help."""


class ApiUnavailable(ApiError):
    """No answer, 5xx or 429: worth retrying with backoff."""


class KeyringError(LpmError):
    """The encryption key directory or one of its key files cannot be used (named, with the reason)."""


class EncryptionKeyError(LpmError):
    """An encrypted dump cannot be opened with the keys at hand; ``key_id`` is the key its manifest names."""

    def __init__(self, message: str, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


class KeyUnavailable(EncryptionKeyError):
    """The key-encryption key the manifest names is not among this process's keys."""


class WrongKey(EncryptionKeyError):
    """The key under the manifest's key ID does not unwrap the dump's data key: another key, or a forgery."""
