"""The few protobuf fields lpm reads and writes, against bytes written from the wire format's spec. The
real runtime's answers are decoded in tests/runtime/test_cri_containerd.py."""

import pytest

from watcher.runtime import protowire


@pytest.mark.parametrize("value, wire", [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"),
                                         (300, b"\xac\x02"), (2**63, b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01")])
def test_varints_encode_as_the_spec_says(value, wire):
    assert protowire.encode_varint(value) == wire
    [(number, kind, decoded)] = protowire.fields(b"\x08" + wire)
    assert (number, kind, decoded) == (1, protowire.VARINT, value)


def test_requests_are_the_bytes_cri_servers_expect():
    # StatusRequest{verbose: true}: field 1, varint, 1. VersionRequest{version: "v1"}: field 1, bytes.
    assert protowire.encode_bool(1, True) == b"\x08\x01"
    assert protowire.encode_bool(1, False) == b""  # proto3 leaves defaults out
    assert protowire.encode_string(1, "v1") == b"\x0a\x02v1"
    assert protowire.encode_string(1, "") == b""


def _entry(key: str, value: str) -> bytes:
    body = protowire.encode_string(1, key) + protowire.encode_string(2, value)
    return b"\x12" + protowire.encode_varint(len(body)) + body


def test_a_status_answer_yields_its_info_map_and_skips_every_other_field():
    config = '{"enableExperimentalRestoreViaCreate":true}' * 10  # longer than 127: a two-byte length
    status = (b"\x0a\x04\x0a\x02\x08\x01"  # field 1: a nested RuntimeStatus, skipped
              + _entry("config", config) + _entry("golang", '"go1.26"')
              + b"\x18\x05"  # an unknown varint field
              + b"\x21" + bytes(8)  # an unknown fixed64 field
              + b"\x2d" + bytes(4))  # an unknown fixed32 field
    assert protowire.string_map(status, 2) == {"config": config, "golang": '"go1.26"'}


def test_a_version_answer_yields_its_strings_by_field_number():
    answer = (protowire.encode_string(1, "0.1.0") + protowire.encode_string(2, "containerd")
              + protowire.encode_string(3, "v2.3.7") + protowire.encode_string(4, "v1"))
    assert protowire.strings(answer) == {1: "0.1.0", 2: "containerd", 3: "v2.3.7", 4: "v1"}


@pytest.mark.parametrize("broken, why", [
    (b"\x0a\x05abc", "5 bytes announced, 3 left"),
    (b"\x08\x80", "truncated or overlong varint"),
    (b"\x08" + b"\xff" * 11, "truncated or overlong varint"),
    (b"\x21\x00\x00", "truncated fixed-width"),
    (b"\x0b", "unsupported wire type 3"),
])
def test_malformed_messages_are_refused_with_where(broken, why):
    with pytest.raises(protowire.WireError, match=why):
        list(protowire.fields(broken))
