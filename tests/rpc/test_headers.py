"""The server's HPACK output and request checks (``meshext.rpc.headers``), decoded by
the ``hpack`` library as a client would."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

import hpack
import pytest
from hpack.hpack import decode_integer, encode_integer
from hypothesis import given, settings
from hypothesis import strategies as st

from meshext.rpc import headers as h
from meshext.rpc.status import Status


def decoded(block: bytes) -> list[tuple[str, str]]:
    decoder = hpack.Decoder(max_header_list_size=1 << 20)
    fields = [(str(name), str(value)) for name, value in decoder.decode(block)]
    assert len(decoder.header_table.dynamic_entries) == 0  # literals never indexed
    return fields


@pytest.mark.parametrize("prefix_bits", [4, 5, 7, 8])
@pytest.mark.parametrize(
    "value", [0, 1, 14, 15, 16, 30, 31, 32, 126, 127, 128, 254, 255, 256, 1337, 2**14, 2**31 - 1]
)
def test_integers_are_encoded_as_rfc_7541_says_at_every_prefix_boundary(
    prefix_bits: int, value: int
) -> None:
    encoded = h._integer(value, prefix_bits, 0)
    assert encoded == bytes(encode_integer(value, prefix_bits))
    assert decode_integer(encoded, prefix_bits) == (value, len(encoded))


def test_integer_examples_from_rfc_7541_appendix_c1() -> None:
    assert h._integer(10, 5, 0) == b"\x0a"
    assert h._integer(1337, 5, 0) == b"\x1f\x9a\x0a"
    assert h._integer(42, 8, 0) == b"\x2a"


def test_an_integer_keeps_the_flag_bits_of_its_first_byte() -> None:
    assert h._integer(3, 6, 0x40) == b"\x43"
    assert h._integer(63, 6, 0x40) == b"\x7f\x00"


@pytest.mark.parametrize("length", [0, 1, 126, 127, 128, 255, 16_000, 70_000])
def test_literals_of_every_length_round_trip_through_an_hpack_decoder(length: int) -> None:
    value = b"v" * length
    assert decoded(h.literal(b"x-name", value)) == [("x-name", value.decode())]


@pytest.mark.parametrize(("index", "name"), [(1, ":authority"), (15, "accept-charset"),
                                             (16, "accept-encoding"), (31, "content-type"),
                                             (61, "www-authenticate")])  # fmt: skip
def test_literals_with_a_static_table_name_decode_to_that_name(index: int, name: str) -> None:
    assert decoded(h.literal_indexed_name(index, b"value")) == [(name, "value")]


@given(
    name=st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=1, max_size=40),
    value=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300),
)
@settings(max_examples=100, deadline=None)
def test_any_ascii_header_round_trips(name: str, value: str) -> None:
    assert decoded(h.literal(name.encode(), value.encode())) == [(name, value)]


def test_the_response_headers_are_status_200_and_grpc_content_type() -> None:
    assert decoded(h.RESPONSE_HEADERS) == [(":status", "200"), ("content-type", "application/grpc")]


def test_trailers_carry_the_status_the_message_and_extra_fields() -> None:
    block = h.trailers(Status.NOT_FOUND, "no such thing", {"x-extra": "1"})
    assert decoded(block) == [
        ("grpc-status", "5"),
        ("grpc-message", "no such thing"),
        ("x-extra", "1"),
    ]


def test_trailers_without_a_message_have_only_the_status() -> None:
    assert decoded(h.trailers(Status.OK)) == [("grpc-status", "0")]


@pytest.mark.parametrize(
    ("message", "encoded"),
    [
        ("plain text: ok!", b"plain text: ok!"),
        ("100%", b"100%25"),
        ("line\nbreak\ttab", b"line%0Abreak%09tab"),
        ("caf\u00e9", b"caf%C3%A9"),
        ("~\x7f", b"~%7F"),
        ("", b""),
    ],
)
def test_grpc_message_is_percent_encoded(message: str, encoded: bytes) -> None:
    assert h.percent_encode(message) == encoded


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_a_percent_encoded_message_is_printable_ascii_and_decodes_back(message: str) -> None:
    encoded = h.percent_encode(message)
    assert all(0x20 <= byte <= 0x7E for byte in encoded)
    assert unquote_to_bytes(encoded) == message.encode("utf-8", "replace")


def test_a_long_grpc_message_is_cut() -> None:
    block = h.trailers(Status.INTERNAL, "y" * 10_000)
    assert dict(decoded(block))["grpc-message"] == "y" * h.MAX_MESSAGE_BYTES


@pytest.mark.parametrize("char", ["%", "\u00e9", "\u20ac", "\U0001f600"])
def test_a_long_grpc_message_is_cut_to_whole_characters_within_the_byte_limit(
    char: str,
) -> None:
    encoded = h.percent_encode(char * 5000)
    assert len(encoded) <= h.MAX_MESSAGE_BYTES
    escaped = h.percent_encode(char)
    assert encoded == escaped * (h.MAX_MESSAGE_BYTES // len(escaped))
    assert unquote_to_bytes(encoded).decode("utf-8") == char * (h.MAX_MESSAGE_BYTES // len(escaped))


def test_an_http_error_block_has_the_status_and_a_text_content_type() -> None:
    assert decoded(h.http_error(415)) == [(":status", "415"), ("content-type", "text/plain")]


REQUEST = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/pkg.Service/Method"),
    (":authority", "localhost"),
    ("content-type", "application/grpc+proto"),
    ("user-agent", "grpc-python/1"),
]


def test_a_grpc_request_names_its_path_encoding_and_user_agent() -> None:
    call = h.read_call(REQUEST)
    assert call == h.CallHeaders("/pkg.Service/Method", "identity", "grpc-python/1")
    assert h.read_call([*REQUEST, ("grpc-encoding", "gzip")]).encoding == "gzip"


@pytest.mark.parametrize(
    ("change", "http_status"),
    [
        ((":method", "GET"), 405),
        (("content-type", "text/plain"), 415),
        ((":path", "relative"), 400),
    ],
)
def test_a_request_that_is_not_a_grpc_call_is_refused_with_an_http_status(
    change: tuple[str, str], http_status: int
) -> None:
    fields = [change if name == change[0] else (name, value) for name, value in REQUEST]
    with pytest.raises(h.BadRequest) as raised:
        h.read_call(fields)
    assert raised.value.http_status == http_status


def test_a_repeated_pseudo_header_is_refused() -> None:
    with pytest.raises(h.BadRequest, match="repeated"):
        h.read_call([*REQUEST, (":path", "/other.Service/Method")])


def test_a_request_without_headers_is_refused_as_not_post() -> None:
    with pytest.raises(h.BadRequest) as raised:
        h.read_call([])
    assert raised.value.http_status == 405
