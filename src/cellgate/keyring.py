"""Encryption at rest of the credentials in the API database.

The API database holds every cell's database and broker credentials, so
whoever can read a backup of it can reach every cell. With
``[api_database] encryption_keys`` set, cellgate stores each of the two URL
columns of ``cell_mapping``, and the ``changes`` of every audit entry (masked
URLs still name hosts, users and databases), encrypted instead.

The stored form is self-describing, so plaintext and encrypted rows can live
side by side during an upgrade or a key rotation::

    aesgcm:<key id>:<token>     written now: AES-256-GCM, bound to its row and column
    fernet:<key id>:<token>     written before: still read, rewritten by rotate-key/encrypt

An ``aesgcm`` token is the url-safe base64 of a random 96-bit nonce and the
AES-GCM ciphertext (``cryptography``'s ``AESGCM``; no hand-written crypto).
Its associated data names where the value lives (:data:`Binding`: the cell
uuid and the column, and for an audit entry its id too), so a ciphertext
copied to another row or column is refused like an edited one, naming the
cell and column it was read as. Fernet has no associated data, which is why
the old form could be moved between rows unnoticed.

Operators keep one key list: the AES key is derived from each configured
(Fernet-format) key with HKDF-SHA256 and a fixed ``info`` label, so the same
key id names both forms and a key rotation needs no second list.

The key id is the first 8 hex digits of the SHA-256 of the key: enough to
tell which configured key a row needs (and to report it) without revealing
anything about the key. The first configured key encrypts; every configured
key decrypts (``MultiFernet`` semantics, but a row names its key, so a missing
key is reported by id instead of as "no key works").

Nothing here touches the database, which is why this is a leaf module and
not part of :mod:`cellgate.apidb`: :mod:`cellgate.config` validates the
configured keys with it, and settings must depend on nothing of the data
layer. :mod:`cellgate.apidb.mappings` and :mod:`cellgate.apidb.audit` apply a
:class:`KeyRing` to rows, and ``cellgate cell rotate-key`` / ``encrypt`` walk
the tables.

``cryptography`` is imported only when a key is actually used (a ring with
keys, a new key, an encrypted row): importing it costs more than the rest of
a ``cellgate cell list`` on plaintext rows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from cellgate.errors import EncryptionKeyError, Hint

if TYPE_CHECKING:
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: Marker of the current encrypted form (AES-256-GCM, bound to row and column).
PREFIX: Final = "aesgcm:"
#: Marker of the form written before values were bound; read, never written.
FERNET_PREFIX: Final = "fernet:"
#: The ``Session.info`` key under which an API database session carries its KeyRing.
SESSION_INFO_KEY: Final = "cellgate.keyring"
#: HKDF ``info``: what the derived key is for, so it is never reused elsewhere.
_HKDF_INFO: Final = b"cellgate aesgcm at-rest v1"
_NONCE_BYTES: Final = 12

#: Where a stored value lives, e.g. ``(cell uuid, "transport_url")``: its
#: associated data. A value read with another binding than it was written
#: with does not decrypt.
Binding = tuple[str, ...]


def url_binding(cell_uuid: str, column: str) -> Binding:
    """What a ``cell_mapping`` URL column's ciphertext is bound to: its cell and column."""
    return ("cell_mapping", cell_uuid, column)


def audit_binding(entry_id: int, cell_uuid: str) -> Binding:
    """What an audit entry's ``changes`` ciphertext is bound to: that entry of that cell."""
    return ("cell_mapping_audit", cell_uuid, "changes", str(entry_id))


def key_id(key: str) -> str:
    """A short, non-secret name for ``key``: 8 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()[:8]


def generate_key() -> str:
    """A new random key in the form ``[api_database] encryption_keys`` takes."""
    from cryptography.fernet import Fernet  # import cost: see the module docstring

    return Fernet.generate_key().decode("ascii")


def _form(stored: str) -> str | None:
    for prefix in (PREFIX, FERNET_PREFIX):
        if stored.startswith(prefix):
            return prefix
    return None


def is_encrypted(stored: str) -> bool:
    return _form(stored) is not None


def is_current(stored: str, key: str | None) -> bool:
    """True if ``stored`` is in the form written now, under key id ``key``."""
    return stored.startswith(PREFIX) and stored_key_id(stored) == key


def stored_key_id(stored: str) -> str | None:
    """The key id an encrypted value names, or ``None`` for plaintext."""
    prefix = _form(stored)
    if prefix is None:
        return None
    return stored[len(prefix) :].partition(":")[0]


def describe(stored: str) -> str:
    """``plaintext``, ``aesgcm:<key id>`` or ``fernet:<key id>``: how a value is stored."""
    prefix = _form(stored)
    return "plaintext" if prefix is None else f"{prefix}{stored_key_id(stored)}"


def session_ring(info: Mapping[str, object]) -> KeyRing:
    """The ring a session's ``info`` carries (:data:`SESSION_INFO_KEY`), or an empty one."""
    ring = info.get(SESSION_INFO_KEY)
    return ring if isinstance(ring, KeyRing) else _NO_KEYS


def _aad(bound_to: Binding) -> bytes:
    # JSON of the parts: unambiguous whatever characters a part holds.
    return json.dumps(["cellgate", *bound_to]).encode("utf-8")


class _Key:
    """One configured key, in both of its uses."""

    __slots__ = ("aead", "fernet")

    def __init__(self, fernet: Fernet, aead: AESGCM) -> None:
        self.fernet = fernet
        self.aead = aead


class KeyRing:
    """The configured keys. ``repr`` shows key ids only.

    An empty ring is valid: it stores plaintext, and refuses (with
    :class:`EncryptionKeyError`) to read a row that is encrypted.
    """

    __slots__ = ("_ids", "_keys")

    def __init__(self, keys: Sequence[str] = ()) -> None:
        parsed: dict[str, _Key] = {}
        for index, key in enumerate(keys, 1):
            kid = key_id(key)
            if kid not in parsed:
                parsed[kid] = _parse(key, index)
        self._keys = parsed
        self._ids = tuple(parsed)

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

    def encrypt(self, plaintext: str, *, bound_to: Binding) -> str:
        """``plaintext`` as ``aesgcm:<id>:<token>`` under the first key, bound to ``bound_to``."""
        primary = self.primary_id
        if primary is None:
            raise EncryptionKeyError(
                "no encryption key is configured",
                hint=Hint.SET_ENCRYPTION_KEYS,
            )
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[primary].aead.encrypt(nonce, plaintext.encode("utf-8"), _aad(bound_to))
        token = base64.urlsafe_b64encode(nonce + sealed).decode("ascii")
        return f"{PREFIX}{primary}:{token}"

    def decrypt(self, stored: str, *, what: str, bound_to: Binding) -> str:
        """The plaintext of a stored value; plaintext values pass through.

        ``what`` names the value in errors (``"cell cell1 transport_url"``);
        the value itself is never quoted. ``bound_to`` must be what it was
        encrypted with (old ``fernet`` values are not bound, and ignore it).
        """
        prefix = _form(stored)
        if prefix is None:
            return stored
        kid, sep, token = stored[len(prefix) :].partition(":")
        key = self._keys.get(kid)
        if not sep or key is None:
            configured = ", ".join(self._ids) or "none"
            raise EncryptionKeyError(
                f"{what} is encrypted with key {kid or '?'}, which is not configured "
                f"(configured key ids: {configured})",
                hint=Hint.ADD_OLD_KEY,
            )
        from cryptography.exceptions import InvalidTag  # loaded with the keys in the ring
        from cryptography.fernet import InvalidToken

        try:
            if prefix == FERNET_PREFIX:
                return key.fernet.decrypt(token.encode("ascii")).decode("utf-8")
            raw = base64.urlsafe_b64decode(token.encode("ascii"))
            nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
            return key.aead.decrypt(nonce, sealed, _aad(bound_to)).decode("utf-8")
        except (InvalidToken, InvalidTag, UnicodeError, binascii.Error, ValueError):
            reason = (
                "the stored value was altered or a different key has the same id"
                if prefix == FERNET_PREFIX
                else "the stored value was altered, copied from another row or column, "
                "or a different key has the same id"
            )
            raise EncryptionKeyError(
                f"{what} does not decrypt with key {kid}: {reason}",
                hint=Hint.RESTORE_ROW,
            ) from None

    def needs_rotation(self, stored: str) -> bool:
        """True if ``stored`` is encrypted, but not in the current form under the first key."""
        return is_encrypted(stored) and not is_current(stored, self.primary_id)


_NO_KEYS: Final = KeyRing()


def _parse(key: str, index: int) -> _Key:
    from cryptography.fernet import Fernet  # import cost: see the module docstring
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    where = f"[api_database] encryption_keys: key {index}"
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii"))
    except (binascii.Error, UnicodeError, ValueError):
        raise EncryptionKeyError(f"{where} is not url-safe base64", hint=Hint.KEY_FORMAT) from None
    if len(raw) != 32:
        raise EncryptionKeyError(
            f"{where} decodes to {len(raw)} bytes, not 32", hint=Hint.KEY_FORMAT
        ) from None
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(raw)
    return _Key(Fernet(key), AESGCM(derived))
