"""Encryption at rest of the two URL columns of ``cell_mapping``.

The API database holds every cell's database and broker credentials, so
whoever can read a backup of it can reach every cell. With
``[api_database] encryption_keys`` set, cellgate stores each URL as a Fernet
token (AES-128-CBC + HMAC-SHA256, from the ``cryptography`` package) instead.

The stored form is self-describing, so plaintext and encrypted rows can live
side by side during an upgrade or a key rotation::

    fernet:<key id>:<token>

The key id is the first 8 hex digits of the SHA-256 of the key: enough to
tell which configured key a row needs (and to report it) without revealing
anything about the key. The first configured key encrypts; every configured
key decrypts (``MultiFernet`` semantics, but a row names its key, so a missing
key is reported by id instead of as "no key works").

Nothing here touches the database, which is why this is a leaf module and
not part of :mod:`cellgate.apidb`: :mod:`cellgate.config` validates the
configured keys with it, and settings must depend on nothing of the data
layer. :mod:`cellgate.apidb.mappings` applies a :class:`KeyRing` to rows, and
``cellgate cell rotate-key`` / ``encrypt`` walk the table.

``cryptography`` is imported only when a key is actually used (a ring with
keys, a new key, an encrypted row): importing it costs more than the rest of
a ``cellgate cell list`` on plaintext rows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from cellgate.errors import EncryptionKeyError, Hint

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

#: Marker at the start of an encrypted column value.
PREFIX: Final = "fernet:"
#: The ``Session.info`` key under which an API database session carries its KeyRing.
SESSION_INFO_KEY: Final = "cellgate.keyring"


def key_id(key: str) -> str:
    """A short, non-secret name for ``key``: 8 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()[:8]


def generate_key() -> str:
    """A new random key in the form ``[api_database] encryption_keys`` takes."""
    from cryptography.fernet import Fernet  # import cost: see the module docstring

    return Fernet.generate_key().decode("ascii")


def is_encrypted(stored: str) -> bool:
    return stored.startswith(PREFIX)


def stored_key_id(stored: str) -> str | None:
    """The key id an encrypted value names, or ``None`` for plaintext."""
    if not is_encrypted(stored):
        return None
    return stored[len(PREFIX) :].partition(":")[0]


class KeyRing:
    """The configured keys. ``repr`` shows key ids only.

    An empty ring is valid: it stores plaintext, and refuses (with
    :class:`EncryptionKeyError`) to read a row that is encrypted.
    """

    __slots__ = ("_fernets", "_ids")

    def __init__(self, keys: Sequence[str] = ()) -> None:
        fernets: dict[str, Fernet] = {}
        for index, key in enumerate(keys, 1):
            fernets.setdefault(key_id(key), _fernet(key, index))
        self._fernets = fernets
        self._ids = tuple(fernets)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Ids of the configured keys, the encrypting one first."""
        return self._ids

    @property
    def primary_id(self) -> str | None:
        return self._ids[0] if self._ids else None

    def __bool__(self) -> bool:
        return bool(self._ids)

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={list(self._ids)!r})"

    def encrypt(self, plaintext: str) -> str:
        """``plaintext`` as ``fernet:<id>:<token>`` under the first key."""
        primary = self.primary_id
        if primary is None:
            raise EncryptionKeyError(
                "no encryption key is configured",
                hint=Hint.SET_ENCRYPTION_KEYS,
            )
        token = self._fernets[primary].encrypt(plaintext.encode("utf-8")).decode("ascii")
        return f"{PREFIX}{primary}:{token}"

    def decrypt(self, stored: str, *, what: str) -> str:
        """The plaintext of a stored value; plaintext values pass through.

        ``what`` names the value in errors (``"cell1 transport_url"``); the
        value itself is never quoted.
        """
        if not is_encrypted(stored):
            return stored
        kid, sep, token = stored[len(PREFIX) :].partition(":")
        fernet = self._fernets.get(kid)
        if not sep or fernet is None:
            configured = ", ".join(self._ids) or "none"
            raise EncryptionKeyError(
                f"{what} is encrypted with key {kid or '?'}, which is not configured "
                f"(configured key ids: {configured})",
                hint=Hint.ADD_OLD_KEY,
            )
        from cryptography.fernet import InvalidToken  # loaded with the Fernet in the ring

        try:
            return fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise EncryptionKeyError(
                f"{what} does not decrypt with key {kid}: the stored value was altered "
                "or a different key has the same id",
                hint=Hint.RESTORE_ROW,
            ) from None

    def needs_rotation(self, stored: str) -> bool:
        """True if ``stored`` is encrypted under a key other than the first."""
        kid = stored_key_id(stored)
        return kid is not None and kid != self.primary_id


def _fernet(key: str, index: int) -> Fernet:
    from cryptography.fernet import Fernet  # import cost: see the module docstring

    where = f"[api_database] encryption_keys: key {index}"
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii"))
    except (binascii.Error, UnicodeError, ValueError):
        raise EncryptionKeyError(f"{where} is not url-safe base64", hint=Hint.KEY_FORMAT) from None
    if len(raw) != 32:
        raise EncryptionKeyError(
            f"{where} decodes to {len(raw)} bytes, not 32", hint=Hint.KEY_FORMAT
        ) from None
    return Fernet(key)
