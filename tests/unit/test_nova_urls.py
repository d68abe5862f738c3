"""Nova's URLs: drivers translated, AMQP 1.0 refused, indexed template fields rendered."""

from __future__ import annotations

import pytest

from cellgate.errors import ConfigError, InvalidURL
from cellgate.nova.urls import check_transport_url, database_translation, translate_database_url
from cellgate.urls import DatabaseURL, expand, mask_url


@pytest.mark.parametrize(
    ("nova", "cellgate"),
    [
        (
            "mysql://nova:pw@db/nova_cell1?charset=utf8",
            "mysql+pymysql://nova:pw@db/nova_cell1?charset=utf8",
        ),
        ("mysql+pymysql://nova:pw@db/n", "mysql+pymysql://nova:pw@db/n"),
        ("postgresql+psycopg2://nova:pw@db:5432/n", "postgresql+psycopg://nova:pw@db:5432/n"),
        ("postgresql://nova:pw@db/n", "postgresql://nova:pw@db/n"),
        ("sqlite:////var/lib/nova/nova.sqlite", "sqlite:////var/lib/nova/nova.sqlite"),
        ("{scheme}://nova:pw@{hostname}/n", "{scheme}://nova:pw@{hostname}/n"),
    ],
)
def test_database_drivers_are_translated_to_the_ones_cellgate_ships(
    nova: str, cellgate: str
) -> None:
    assert translate_database_url(nova) == cellgate
    if "{" not in nova:  # and cellgate accepts the result
        assert DatabaseURL.parse(cellgate).backend == cellgate.split(":")[0].split("+")[0]


def test_a_translation_is_named_and_an_unchanged_url_is_not() -> None:
    assert database_translation("mysql://a:b@h/d") == "mysql -> mysql+pymysql"
    assert database_translation("mysql+pymysql://a:b@h/d") is None


def test_untranslated_mysqlclient_url_is_refused_by_cellgate() -> None:
    with pytest.raises(InvalidURL):
        DatabaseURL.parse("mysql://nova:pw@db/nova")


@pytest.mark.parametrize("scheme", ["amqp", "AMQP", "kafka"])
def test_oslo_messaging_amqp_1_0_is_refused_not_reinterpreted(scheme: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        check_transport_url(f"{scheme}://nova:s3cret@broker:5672/")
    assert "s3cret" not in str(caught.value)
    assert (
        check_transport_url("rabbit://nova:s3cret@broker:5672/")
        == "rabbit://nova:s3cret@broker:5672/"
    )


DEFAULT = "rabbit://u1:p1@h1:5672,u2:p2@h2:5673/vh"


def test_indexed_fields_take_the_nth_host_of_a_multi_host_default() -> None:
    template = "{scheme}://{username2}:{password2}@{hostname2}:{port2},{username1}:{password1}@{hostname1}:{port1}/cell2"
    assert expand(template, DEFAULT, option="[DEFAULT] transport_url") == (
        "rabbit://u2:p2@h2:5673,u1:p1@h1:5672/cell2"
    )


def test_an_index_past_the_last_host_is_an_error() -> None:
    with pytest.raises(ConfigError, match="only 2 host"):
        expand("rabbit://{hostname3}/x", DEFAULT, option="[DEFAULT] transport_url")


@pytest.mark.parametrize("field", ["hostname0", "path1", "username01"])
def test_other_numbered_names_are_unknown_placeholders(field: str) -> None:
    with pytest.raises(InvalidURL, match="unknown placeholder"):
        expand(f"rabbit://{{{field}}}/x", DEFAULT, option="[DEFAULT] transport_url")


def test_indexed_password_placeholders_are_kept_when_masking() -> None:
    assert mask_url("rabbit://{username1}:{password1}@{hostname1}/v") == (
        "rabbit://{username1}:{password1}@{hostname1}/v"
    )
    assert "p1" not in mask_url("rabbit://u1:p1@h1/v")
