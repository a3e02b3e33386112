"""Credentials in URLs never reach what costflux prints."""

from __future__ import annotations

import pytest

from costflux.cli.demo import _without_credentials


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@10.0.0.1:6379/0", "redis://10.0.0.1:6379/0"),
        ("redis://user:s3cret@cache/2", "redis://cache/2"),
        ("redis://127.0.0.1:6380/0", "redis://127.0.0.1:6380/0"),
    ],
)
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert _without_credentials(url) == shown
    assert "s3cret" not in _without_credentials(url)
