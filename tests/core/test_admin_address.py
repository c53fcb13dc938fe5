"""`status`, `proxies` and `config-dump` reach the admin API the way `serve` names it."""

from __future__ import annotations

from meshext.cli.status import admin_url


def test_host_and_port_as_given_to_serve_admin_address_is_accepted() -> None:
    assert admin_url("127.0.0.1:15014") == "http://127.0.0.1:15014"


def test_a_url_is_used_as_it_is() -> None:
    assert admin_url("https://meshext.example:9443/") == "https://meshext.example:9443"
