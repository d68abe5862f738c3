"""A safe cell lifecycle: masked dry-run diffs, row versions, and the audit trail."""

from __future__ import annotations

import pytest

from cellgate.apidb.audit import SECRET_CHANGED
from cellgate.apidb.hosts import map_host
from cellgate.cli.exit_codes import ExitCode
from tests.functional.conftest import Deployment


@pytest.fixture
def synced(deployment: Deployment) -> Deployment:
    deployment.run("api-db", "sync")
    return deployment


def create(d: Deployment, name: str) -> str:
    url = d.new_cell_url().render(hide_password=False)
    args = ["--transport-url", f"memory://{name}", "--database-connection", url]
    d.run("cell", "create", "--name", name, *args)
    return url


def new_password(d: Deployment, url: str) -> str:
    """``url`` with another password: a change the masked forms cannot show."""
    password = "n3w-p@ss/w:rd"
    d.secrets.append(password)
    userinfo, at, rest = url.rpartition("@")
    if not at:  # SQLite: no password to change, so change the file instead
        return url + ".moved"
    user = userinfo.rsplit(":", 1)[0]
    return f"{user}:{password.replace('@', '%40').replace('/', '%2F').replace(':', '%3A')}@{rest}"


def test_dry_run_shows_a_masked_diff_and_writes_nothing(synced: Deployment) -> None:
    url = create(synced, "c1")
    before = synced.json("cell", "show", "c1")
    changed = new_password(synced, url)
    args = ["cell", "update", "c1", "--name", "c9", "--database-connection", changed, "--disable"]
    text = synced.run(*args, "--dry-run").stdout
    assert "cell c1 (version 1) would change:" in text
    assert "name: c1 -> c9" in text and "disabled: no -> yes" in text
    assert "nothing was written" in text
    plan = synced.json(*args, "--dry-run")
    assert plan["dry_run"] is True and plan["version"] == 1
    old_masked, new_masked = plan["changes"]["database_connection"]
    assert old_masked == before["database_connection"]
    if "@" in url:
        assert new_masked == old_masked + SECRET_CHANGED
    assert synced.json("cell", "show", "c1") == before
    assert [e["action"] for e in synced.json("cell", "history", "c1")] == ["create"]


def test_dry_run_validates_like_the_real_update(synced: Deployment) -> None:
    create(synced, "c1")
    create(synced, "c2")
    result = synced.run("cell", "update", "c1", "--name", "c2", "--dry-run", ok=False)
    assert result.exit_code == ExitCode.CONFLICT
    bad = synced.run("cell", "update", "c1", "--transport-url", "nope", "--dry-run", ok=False)
    assert bad.exit_code == ExitCode.USAGE
    same = synced.run("cell", "update", "c1", "--name", "c1", "--dry-run").stdout
    assert "nothing to change" in same


def test_expected_version_refuses_a_stale_update(synced: Deployment) -> None:
    create(synced, "c1")
    assert synced.json("cell", "show", "c1")["version"] == 1
    synced.run("cell", "update", "c1", "--disable", "--expected-version", "1")
    assert synced.json("cell", "show", "c1")["version"] == 2
    result = synced.run("cell", "update", "c1", "--enable", "--expected-version", "1", ok=False)
    assert result.exit_code == ExitCode.CONFLICT
    assert "changed since version 1 (it is now at version 2)" in result.stderr
    assert synced.json("cell", "show", "c1")["disabled"] is True
    # An update that changes nothing writes nothing: no new version, no entry.
    synced.run("cell", "update", "c1", "--disable")
    assert synced.json("cell", "show", "c1")["version"] == 2


def test_history_follows_renames_and_deletion(synced: Deployment) -> None:
    url = create(synced, "c1")
    uuid = synced.json("cell", "show", "c1")["uuid"]
    synced.run("cell", "update", "c1", "--database-connection", new_password(synced, url))
    synced.run("cell", "update", "c1", "--name", "renamed")
    synced.run("cell", "delete", "renamed")
    for ident in ("c1", "renamed", uuid):
        entries = synced.json("cell", "history", ident)
        assert [e["action"] for e in entries] == ["create", "update", "update", "delete"]
        assert [e["version"] for e in entries] == [1, 2, 3, 4]
        assert all(e["actor"] and e["cell_uuid"] == uuid for e in entries)
    entries = synced.json("cell", "history", uuid)
    assert entries[2]["changes"] == {"name": ["c1", "renamed"]}
    assert entries[3]["changes"] == {"deleted": [False, True]}
    table = synced.run("cell", "history", "renamed").stdout
    assert "name: c1 -> renamed" in table and "WHEN (UTC)" in table


def test_history_of_an_unknown_cell_is_not_found(synced: Deployment) -> None:
    result = synced.run("cell", "history", "ghost", ok=False)
    assert result.exit_code == ExitCode.NOT_FOUND
    assert result.stderr.count("\n") == 1


def test_host_mappings_are_in_the_cell_history(synced: Deployment) -> None:
    create(synced, "c1")
    uuid = synced.json("cell", "show", "c1")["uuid"]
    with synced.api() as api, api.session() as session:
        map_host(session, "compute-1", uuid, actor="discovery@test")
        map_host(session, "compute-1", uuid, actor="discovery@test")  # already mapped: no entry
    synced.run("host", "delete", "compute-1")
    entries = synced.json("cell", "history", "c1")
    assert [(e["action"], e["changes"]) for e in entries[1:]] == [
        ("map-host", {"host": [None, "compute-1"]}),
        ("unmap-host", {"host": ["compute-1", None]}),
    ]
    assert entries[1]["actor"] == "discovery@test" and entries[1]["version"] is None
