"""One small exception hierarchy.

Each class also inherits the builtin it specialises, so callers that catch
``ValueError`` or ``LookupError`` keep working, and orchestration can retry
exactly :class:`TransientProviderError` and nothing else.
"""

from __future__ import annotations


class RsEmbedError(Exception):
    """Base class of every error raised on purpose by rs_embed_core."""


class SpecError(RsEmbedError, ValueError):
    """A spec value is invalid. The message names the field, the value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is invalid: {allowed}")


class UnknownModelError(RsEmbedError, KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(RsEmbedError, ValueError):
    """A checkpoint is missing, malformed or does not match the architecture."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint could not be found where it was looked for."""


class ProviderError(RsEmbedError, RuntimeError):
    """Any failure of an imagery provider."""


class TransientProviderError(ProviderError):
    """Quota, 5xx, connection faults: worth retrying with backoff."""


class PermanentProviderError(ProviderError):
    """Auth, bad request, request too large: retrying cannot help."""


class NoImageryError(PermanentProviderError, LookupError):
    """The collection has no scene for the ROI, window and cloud threshold."""


class ProviderConfigError(PermanentProviderError):
    """The provider is not configured (credentials, project, backend name)."""


class CacheError(RsEmbedError, OSError):
    """The chip cache cannot be used (unwritable location, corrupt entry)."""


class StoreError(RsEmbedError, RuntimeError):
    """The embedding store refused an operation; nothing was changed."""


class StoreInputError(StoreError, ValueError):
    """An entry does not fit the store (shape, dims, NaN-only data, unknown ref)."""


class StoreLookupError(StoreInputError, LookupError):
    """A month, ROI or entry asked of the store is not there; the message lists what is."""


class EmptyStoreError(StoreLookupError):
    """The store (at the ref asked for) holds no entries yet."""


class CheckpointMismatchError(CheckpointError):
    """Vectors from different checkpoints would be compared; refused (their spaces differ)."""
