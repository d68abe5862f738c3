"""Encryption at rest through the CLI, on every backend: encrypt, rotate, decrypt.

Keys are added to the deployment's secrets, so :meth:`Deployment.run` fails
the test if a key (or a password) shows up in any output.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from cellgate.apidb.mappings import get_cell
from cellgate.apidb.schema import CellMappingAuditRow, CellMappingRow
from cellgate.apidb.updates import reseal_cell
from cellgate.cli.exit_codes import ExitCode
from cellgate.errors import EncryptionKeyError, Hint
from cellgate.keyring import FERNET_PREFIX, PREFIX, generate_key, key_id
from tests.functional.conftest import Deployment


def set_keys(d: Deployment, *keys: str) -> None:
    """Rewrite the deployment's config with these keys (none: no encryption)."""
    text = d.config_file.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^encryption_keys = .*\n", "", text)
    if keys:
        text = text.replace(
            "[api_database]\n", f"[api_database]\nencryption_keys = {', '.join(keys)}\n"
        )
    d.config_file.write_text(text, encoding="utf-8")
    d.secrets.extend(keys)


def stored(d: Deployment) -> dict[str, tuple[str, str]]:
    """The raw URL columns of every live cell, as the API database holds them."""
    with d.api() as api, api.session() as session:
        rows = session.scalars(select(CellMappingRow).where(CellMappingRow.deleted == 0))
        return {r.name or r.uuid: (r.transport_url, r.database_connection) for r in rows}


def create(d: Deployment, name: str) -> str:
    url = d.new_cell_url().render(hide_password=False)
    args = ["--transport-url", f"memory://{name}", "--database-connection", url]
    d.run("cell", "create", "--name", name, *args)
    return url


@pytest.fixture
def synced(deployment: Deployment) -> Deployment:
    deployment.run("api-db", "sync")
    return deployment


def test_new_cells_are_stored_encrypted_and_read_back_plain(synced: Deployment) -> None:
    key = generate_key()
    set_keys(synced, key)
    url = create(synced, "c1")
    transport, database = stored(synced)["c1"]
    for value in (transport, database):
        assert value.startswith(f"{PREFIX}{key_id(key)}:")
        assert "memory" not in value and url not in value
    assert synced.revealed("c1")["database_connection"] == url
    shown = synced.json("cell", "show", "c1")
    assert shown["encryption"] == f"aesgcm:{key_id(key)}"
    assert f"aesgcm:{key_id(key)}" in synced.run("cell", "list").stdout
    synced.run("db", "sync", "--cell", "c1")  # migrates through the decrypted URL
    verify = synced.run("cell", "verify", "c1")
    assert "FAILED" not in verify.stdout


def test_plaintext_and_encrypted_rows_coexist_until_encrypt_all(synced: Deployment) -> None:
    create(synced, "old")
    key = generate_key()
    set_keys(synced, key)
    create(synced, "new")
    kinds = {c["name"]: c["encryption"] for c in synced.json("cell", "list")}
    assert kinds == {"old": "plaintext", "new": f"aesgcm:{key_id(key)}"}

    preview = synced.json("cell", "encrypt", "--all", "--dry-run")
    assert (preview["changed"], preview["unchanged"], preview["dry_run"]) == (1, 1, True)
    assert not stored(synced)["old"][0].startswith(PREFIX)  # a dry run writes nothing

    done = synced.json("cell", "encrypt", "--all")
    assert [c["name"] for c in done["cells"]] == ["old"]
    assert all(v.startswith(PREFIX) for pair in stored(synced).values() for v in pair)
    again = synced.json("cell", "encrypt", "--all")
    assert (again["changed"], again["unchanged"]) == (0, 2)


def test_rotate_key_moves_every_row_to_the_first_key(synced: Deployment) -> None:
    old, new = generate_key(), generate_key()
    set_keys(synced, old)
    urls = {name: create(synced, name) for name in ("c1", "c2", "c3")}
    set_keys(synced, new, old)
    preview = synced.run("cell", "rotate-key", "--dry-run").stdout
    assert "would change 3 cell(s)" in preview and key_id(new) in preview
    assert all(key_id(old) in v for pair in stored(synced).values() for v in pair)

    report = synced.json("cell", "rotate-key")
    assert (report["changed"], report["unchanged"], report["key_id"]) == (3, 0, key_id(new))
    assert all(f":{key_id(new)}:" in v for pair in stored(synced).values() for v in pair)
    # The old key can go now: everything reads with the new one alone.
    set_keys(synced, new)
    assert {n: synced.revealed(n)["database_connection"] for n in urls} == urls
    history = synced.json("cell", "history", "c2")
    assert [e["action"] for e in history] == ["create", "rotate-key"]
    assert history[-1]["changes"] == {
        "encryption": [f"aesgcm:{key_id(old)}", f"aesgcm:{key_id(new)}"]
    }


def test_rotate_key_resumes_after_an_interruption(synced: Deployment) -> None:
    old, new = generate_key(), generate_key()
    set_keys(synced, old)
    for name in ("c1", "c2", "c3"):
        create(synced, name)
    set_keys(synced, new, old)
    # An interrupted run: it re-sealed c2, then stopped.
    with synced.api() as api, api.session() as session:
        uuid = session.scalars(
            select(CellMappingRow.uuid).where(CellMappingRow.name == "c2")
        ).one()
        assert reseal_cell(session, uuid, mode="rotate-key")
        assert not reseal_cell(session, uuid, mode="rotate-key")  # re-checked under the lock
    report = synced.json("cell", "rotate-key")
    assert (report["changed"], report["unchanged"]) == (2, 1)
    assert sorted(c["name"] for c in report["cells"]) == ["c1", "c3"]


def test_a_missing_or_wrong_key_is_exit_2_and_names_the_key_id(synced: Deployment) -> None:
    old = generate_key()
    set_keys(synced, old)
    create(synced, "c1")
    stranger = generate_key()
    set_keys(synced, stranger)
    for args in (("cell", "list"), ("cell", "show", "c1"), ("cell", "rotate-key")):
        result = synced.run(*args, ok=False)
        assert result.exit_code == ExitCode.USAGE, result.output
        assert f"encrypted with key {key_id(old)}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    set_keys(synced)
    result = synced.run("cell", "encrypt", "--all", ok=False)
    assert result.exit_code == ExitCode.USAGE and "none is configured" in result.stderr
    bad = synced.config_file.read_text().replace(
        "[api_database]\n", "[api_database]\nencryption_keys = hunter2hunter2\n"
    )
    synced.config_file.write_text(bad)
    synced.secrets.append("hunter2hunter2")
    result = synced.run("cell", "list", ok=False)
    assert result.exit_code == ExitCode.USAGE and "encryption_keys: key 1" in result.stderr


def test_an_altered_row_stops_the_run_before_any_write(synced: Deployment) -> None:
    old, new = generate_key(), generate_key()
    set_keys(synced, old)
    create(synced, "a1")
    create(synced, "b2")
    with synced.api() as api, api.session() as session:
        row = session.scalars(select(CellMappingRow).where(CellMappingRow.name == "b2")).one()
        session.execute(
            update(CellMappingRow)
            .where(CellMappingRow.id == row.id)
            .values(database_connection=row.database_connection[:-8] + "AAAAAAA=")
        )
    set_keys(synced, new, old)
    before = stored(synced)
    result = synced.run("cell", "rotate-key", ok=False)
    assert result.exit_code == ExitCode.USAGE
    assert "cell b2 database_connection does not decrypt" in result.stderr
    assert stored(synced) == before  # a1 was not rotated either


def test_decrypt_all_returns_to_plaintext(synced: Deployment) -> None:
    key = generate_key()
    set_keys(synced, key)
    url = create(synced, "c1")
    report = synced.json("cell", "decrypt", "--all")
    assert report["changed"] == 1
    assert stored(synced)["c1"] == ("memory://c1", url)
    set_keys(synced)
    assert synced.json("cell", "show", "c1")["encryption"] == "plaintext"


def test_usage_errors(synced: Deployment) -> None:
    set_keys(synced, generate_key())
    for args in (("cell", "encrypt"), ("cell", "encrypt", "c1", "--all")):
        assert synced.run(*args, ok=False).exit_code == ExitCode.USAGE
    result = synced.run("cell", "encrypt", "nope", ok=False)
    assert result.exit_code == ExitCode.NOT_FOUND


def test_generate_key_prints_a_usable_key(synced: Deployment) -> None:
    key = synced.run("cell", "generate-key").stdout.strip()
    set_keys(synced, key)
    create(synced, "c1")
    assert synced.json("cell", "show", "c1")["encryption"] == f"aesgcm:{key_id(key)}"


def raw_audit(d: Deployment) -> list[CellMappingAuditRow]:
    with d.api() as api, api.session() as session:
        rows = session.scalars(select(CellMappingAuditRow).order_by(CellMappingAuditRow.id))
        return list(rows)


def set_column(d: Deployment, model: Any, row_id: int, **values: str) -> None:
    with d.api() as api, api.session() as session:
        session.execute(update(model).where(model.id == row_id).values(**values))


def row_of(d: Deployment, name: str) -> CellMappingRow:
    with d.api() as api, api.session() as session:
        return session.scalars(select(CellMappingRow).where(CellMappingRow.name == name)).one()


def test_a_ciphertext_copied_to_another_row_or_column_is_refused(synced: Deployment) -> None:
    set_keys(synced, generate_key())
    create(synced, "a1")
    create(synced, "b2")
    a1, b2 = row_of(synced, "a1"), row_of(synced, "b2")
    # Another row's value, same column: b2 would route to a1's database.
    set_column(synced, CellMappingRow, b2.id, database_connection=a1.database_connection)
    result = synced.run("cell", "show", "b2", ok=False)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "cell b2 database_connection does not decrypt" in result.stderr
    assert "copied from another row or column" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with synced.api() as api, api.session() as session:  # the typed error, for the library
        with pytest.raises(EncryptionKeyError, match="cell b2 database_connection") as caught:
            get_cell(session, "b2")
        assert caught.value.hint is Hint.RESTORE_ROW
        assert get_cell(session, "a1").name == "a1"  # the row it came from still reads
    # The same row's other column.
    set_column(synced, CellMappingRow, b2.id, database_connection=b2.database_connection)
    set_column(synced, CellMappingRow, b2.id, transport_url=b2.database_connection)
    result = synced.run("cell", "show", "b2", ok=False)
    assert result.exit_code == ExitCode.USAGE
    assert "cell b2 transport_url does not decrypt" in result.stderr
    set_column(synced, CellMappingRow, b2.id, transport_url=b2.transport_url)
    assert synced.json("cell", "show", "b2")["name"] == "b2"  # put back, it reads again


def test_old_fernet_rows_still_read_and_rotate_key_rewrites_them(synced: Deployment) -> None:
    key = generate_key()
    set_keys(synced, key)
    url = create(synced, "c1")
    row = row_of(synced, "c1")

    def legacy(plaintext: str) -> str:  # the form cellgate wrote before values were bound
        return f"{FERNET_PREFIX}{key_id(key)}:{Fernet(key).encrypt(plaintext.encode()).decode()}"

    set_column(
        synced,
        CellMappingRow,
        row.id,
        transport_url=legacy("memory://c1"),
        database_connection=legacy(url),
    )
    assert synced.revealed("c1")["database_connection"] == url
    assert synced.json("cell", "show", "c1")["encryption"] == f"fernet:{key_id(key)}"
    report = synced.json("cell", "rotate-key")  # same key, old form: still rewritten
    assert report["changed"] == 1
    assert all(v.startswith(PREFIX) for v in stored(synced)["c1"])
    assert synced.revealed("c1")["database_connection"] == url
    assert synced.json("cell", "rotate-key")["changed"] == 0
    # `cell encrypt` moves old-form rows too.
    set_column(synced, CellMappingRow, row.id, transport_url=legacy("memory://c1"))
    assert synced.json("cell", "encrypt", "c1")["changed"] == 1
    assert stored(synced)["c1"][0].startswith(PREFIX)


def test_audit_entries_are_encrypted_and_history_survives_rotation(synced: Deployment) -> None:
    create(synced, "plain")  # an entry written before there were keys
    old, new = generate_key(), generate_key()
    set_keys(synced, old)
    url = create(synced, "c1")
    database_name = str(make_url(url).database).rsplit("/", 1)[-1]
    entries = raw_audit(synced)
    assert not entries[0].changes.startswith(PREFIX)
    for entry in entries[1:]:
        assert entry.changes.startswith(f"{PREFIX}{key_id(old)}:")
        assert "memory" not in entry.changes and database_name not in entry.changes
    (created,) = synced.json("cell", "history", "c1")
    assert created["unreadable"] is None
    assert created["changes"]["transport_url"] == [None, "memory://c1"]

    report = synced.json("cell", "encrypt", "--all")
    assert report["audit_entries"]["changed"] == 1  # the one from before the keys
    set_keys(synced, new, old)
    before = len(raw_audit(synced))
    report = synced.json("cell", "rotate-key")
    assert report["audit_entries"]["changed"] == before  # new entries are under the new key
    assert all(e.changes.startswith(f"{PREFIX}{key_id(new)}:") for e in raw_audit(synced))
    assert report["audit_entries"]["unreadable"] == 0
    set_keys(synced, new)  # the old key is gone: the trail still reads
    history = synced.json("cell", "history", "c1")
    assert [e["action"] for e in history] == ["create", "rotate-key"]
    assert all(e["unreadable"] is None for e in history)
    assert history[0]["changes"]["transport_url"] == [None, "memory://c1"]
    assert synced.json("cell", "history", "plain")[0]["changes"]["name"] == [None, "plain"]


def test_an_audit_entry_that_does_not_open_is_marked_not_fatal(synced: Deployment) -> None:
    first = generate_key()
    set_keys(synced, first)
    create(synced, "a1")
    create(synced, "b2")
    synced.run("cell", "update", "b2", "--disable")
    a1_entry, b2_create, b2_update = raw_audit(synced)
    # b2's first entry replaced by a1's ciphertext: bound to another entry.
    set_column(synced, CellMappingAuditRow, b2_create.id, changes=a1_entry.changes)
    history = synced.json("cell", "history", "b2")
    assert [e["unreadable"] is None for e in history] == [False, True]
    assert (
        f"audit entry {b2_create.id} of cell b2 changes does not decrypt"
        in (history[0]["unreadable"])
    )
    assert history[0]["changes"] == {}
    table = synced.run("cell", "history", "b2").stdout
    assert "(unreadable: " in table and "disabled" in table
    # rotate-key leaves that entry as it is, counts it, and rotates the rest.
    set_keys(synced, generate_key(), first)
    assert "audit entries: changed 2, 1 unreadable" in synced.run("cell", "rotate-key").stdout
    assert raw_audit(synced)[1].changes == a1_entry.changes
    # A key that is gone: the entries under it are marked, the rest still read.
    set_keys(synced, generate_key())
    synced.run("cell", "decrypt", "--all", ok=False)  # the cells need the key: refused
    history = synced.json("cell", "history", "a1")
    assert "which is not configured" in history[0]["unreadable"]
