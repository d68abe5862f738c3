"""Encryption at rest: the key ring, the stored form, and the masked audit diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellgate.apidb.audit import SECRET_CHANGED, url_change
from cellgate.config import load_settings
from cellgate.errors import ConfigError, EncryptionKeyError
from cellgate.keyring import (
    FERNET_PREFIX,
    PREFIX,
    KeyRing,
    audit_binding,
    describe,
    generate_key,
    is_current,
    is_encrypted,
    key_id,
    stored_key_id,
    url_binding,
)

URL = "mysql+pymysql://nova:s3cr%40t@127.0.0.1/nova_cell1"
#: Where a test value "lives": what its ciphertext is bound to.
AT = url_binding("8b2cf3f4-0d55-4e8f-a0a4-2b8a4e3c1f00", "database_connection")


def test_round_trip_marks_the_value_and_hides_the_url() -> None:
    key = generate_key()
    ring = KeyRing([key])
    stored = ring.encrypt(URL, bound_to=AT)
    assert stored.startswith(f"{PREFIX}{key_id(key)}:")
    assert is_encrypted(stored) and stored_key_id(stored) == key_id(key)
    assert "s3cr" not in stored and "nova" not in stored
    assert ring.decrypt(stored, what="x", bound_to=AT) == URL


def test_plaintext_passes_through_any_ring() -> None:
    assert KeyRing().decrypt(URL, what="x", bound_to=AT) == URL
    assert KeyRing([generate_key()]).decrypt(URL, what="x", bound_to=AT) == URL
    assert stored_key_id(URL) is None


def test_first_key_encrypts_every_key_decrypts() -> None:
    old, new = generate_key(), generate_key()
    stored_old = KeyRing([old]).encrypt(URL, bound_to=AT)
    ring = KeyRing([new, old])
    assert ring.primary_id == key_id(new)
    assert ring.decrypt(stored_old, what="x", bound_to=AT) == URL
    assert ring.needs_rotation(stored_old)
    assert not ring.needs_rotation(ring.encrypt(URL, bound_to=AT))
    assert not ring.needs_rotation(URL)


def test_a_missing_key_is_named_by_id_never_by_value() -> None:
    old, new = generate_key(), generate_key()
    stored = KeyRing([old]).encrypt(URL, bound_to=AT)
    with pytest.raises(EncryptionKeyError) as caught:
        KeyRing([new]).decrypt(stored, what="cell c1 transport_url", bound_to=AT)
    message = str(caught.value)
    assert key_id(old) in message and key_id(new) in message and "c1" in message
    assert old not in message and new not in message and "s3cr" not in message
    with pytest.raises(EncryptionKeyError, match="configured key ids: none"):
        KeyRing().decrypt(stored, what="x", bound_to=AT)


def test_an_altered_value_is_an_error_not_garbage() -> None:
    ring = KeyRing([generate_key()])
    stored = ring.encrypt(URL, bound_to=AT)
    tampered = stored[:-6] + ("A" if stored[-6] != "A" else "B") + stored[-5:]
    with pytest.raises(EncryptionKeyError, match="does not decrypt"):
        ring.decrypt(tampered, what="x", bound_to=AT)


def test_a_value_decrypts_only_where_it_was_written() -> None:
    ring = KeyRing([generate_key()])
    stored = ring.encrypt(URL, bound_to=AT)
    other_cell = url_binding("0f0e0d0c-0b0a-4908-8706-050403020100", "database_connection")
    other_column = url_binding(AT[1], "transport_url")
    for elsewhere in (other_cell, other_column, audit_binding(7, AT[1])):
        with pytest.raises(EncryptionKeyError, match="copied from another row or column"):
            ring.decrypt(stored, what="cell c2 transport_url", bound_to=elsewhere)
    assert ring.decrypt(stored, what="x", bound_to=AT) == URL


def test_old_fernet_values_still_read_and_need_rotation() -> None:
    from cryptography.fernet import Fernet

    key = generate_key()
    legacy = f"{FERNET_PREFIX}{key_id(key)}:{Fernet(key).encrypt(URL.encode()).decode()}"
    ring = KeyRing([key])
    assert ring.decrypt(legacy, what="x", bound_to=AT) == URL  # unbound: any binding reads it
    assert describe(legacy) == f"fernet:{key_id(key)}" and stored_key_id(legacy) == key_id(key)
    assert ring.needs_rotation(legacy)  # rotate-key moves it to the bound form
    fresh = ring.encrypt(URL, bound_to=AT)
    assert describe(fresh) == f"aesgcm:{key_id(key)}" and not ring.needs_rotation(fresh)
    assert is_current(fresh, key_id(key)) and not is_current(legacy, key_id(key))


def test_the_aead_key_is_derived_not_the_configured_key_itself() -> None:
    import base64

    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = generate_key()
    stored = KeyRing([key]).encrypt(URL, bound_to=AT)
    raw = base64.urlsafe_b64decode(stored.split(":", 2)[2])
    with pytest.raises(InvalidTag):  # the raw configured key does not open it: HKDF did
        AESGCM(base64.urlsafe_b64decode(key)).decrypt(raw[:12], raw[12:], None)


def test_encrypting_without_a_key_is_refused() -> None:
    with pytest.raises(EncryptionKeyError, match="no encryption key"):
        KeyRing().encrypt(URL, bound_to=AT)


@pytest.mark.parametrize("bad", ["not base64 !!", "c2hvcnQ=", "a" * 44])
def test_bad_keys_are_refused_without_quoting_them(bad: str) -> None:
    with pytest.raises(EncryptionKeyError) as caught:
        KeyRing([generate_key(), bad])
    assert "key 2" in str(caught.value)
    assert bad not in str(caught.value)


def test_repr_shows_ids_only() -> None:
    key = generate_key()
    assert repr(KeyRing([key])) == f"KeyRing(key_ids=[{key_id(key)!r}])"
    assert key not in repr(KeyRing([key]))


def test_config_reads_the_key_list_and_keeps_it_out_of_repr(tmp_path: Path) -> None:
    keys = [generate_key(), generate_key()]
    conf = tmp_path / "c.conf"
    conf.write_text(f"[api_database]\nencryption_keys = {keys[0]} ,\n  {keys[1]}\n")
    settings = load_settings(conf, {})
    assert settings.api_database.encryption_keys == tuple(keys)
    assert all(k not in repr(settings) for k in keys)


def test_config_rejects_a_bad_key_as_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("[api_database]\nencryption_keys = hunter2\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(conf, {})
    assert "hunter2" not in str(caught.value)


def test_url_change_is_masked_and_flags_a_secret_only_change() -> None:
    assert url_change(URL, URL) is None
    before, after = url_change(URL, URL.replace("s3cr%40t", "other")) or (None, None)
    assert before == "mysql+pymysql://nova:***@127.0.0.1/nova_cell1"
    assert after == before + SECRET_CHANGED
    assert url_change(None, URL) == (None, "mysql+pymysql://nova:***@127.0.0.1/nova_cell1")
    moved = url_change(URL, URL.replace("127.0.0.1", "127.0.0.2"))
    assert moved is not None and "s3cr" not in str(moved) and SECRET_CHANGED not in moved[1]
