"""Kubelet archive file names: RFC 3339 times with colons, names full of dashes."""

from datetime import UTC, datetime

import pytest

from watcher.archive import names
from watcher.errors import ArchiveError


@pytest.mark.parametrize("file_name, pod, rest, when", [
    ("checkpoint-cart-7d9f8-x2x4z_shop-prod-cart-api-2026-11-25T10:11:12Z.tar",
     "cart-7d9f8-x2x4z", "shop-prod-cart-api", datetime(2026, 11, 25, 10, 11, 12, tzinfo=UTC)),
    ("checkpoint-web.v2-0_default-nginx-2024-01-26T09:10:22+01:00.tar",
     "web.v2-0", "default-nginx", datetime(2024, 1, 26, 8, 10, 22, tzinfo=UTC)),
    ("checkpoint-a_b-c-2024-01-26T09:10:22.123456789-05:30.tar",
     "a", "b-c", datetime(2024, 1, 26, 14, 40, 22, 123456, tzinfo=UTC)),
])
def test_kubelet_names_parse(file_name, pod, rest, when):
    parsed = names.parse(file_name)
    assert (parsed.pod_name, parsed.namespace_and_container) == (pod, rest)
    assert parsed.taken_at == when


def test_ambiguous_namespace_container_split_is_checked_not_guessed():
    parsed = names.parse("checkpoint-p_team-a-web-api-2026-11-25T10:11:12Z.tar")
    assert parsed.matches("team-a", "web-api") and parsed.matches("team", "a-web-api")
    assert not parsed.matches("team-a", "web")


@pytest.mark.parametrize("file_name", [
    "checkpoint-p_ns-c.tar",                                  # no time
    "checkpoint-p-ns-c-2026-11-25T10:11:12Z.tar",             # no '_' between pod and namespace
    "checkpoint-p_ns-c-2026-13-25T10:11:12Z.tar",             # month 13
    "checkpoint-../p_ns-c-2026-11-25T10:11:12Z.tar",
    "checkpoint-p_ns-c-2026-11-25T10:11:12Z.tar.gz",
    "dump.tar",
])
def test_other_names_are_refused_naming_the_file(file_name):
    with pytest.raises(ArchiveError, match="archive"):
        names.parse(file_name)


def test_candidate_filter():
    assert names.is_candidate("checkpoint-x.tar")
    assert not names.is_candidate(".checkpoint-x.tar.swp") and not names.is_candidate("checkpoint-x.tar.tmp")
