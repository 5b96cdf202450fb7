"""replicad.wire: request parsing, limits, error codes, reply encoding and parsing.  Pure."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicad import wire
from replicad.vclock import VectorClock
from replicad.wire import (
    Code,
    Limits,
    Reply,
    ReplyMeta,
    ReplyParser,
    Request,
    SessionContext,
    WireError,
    check_key,
    decode_line,
    parse_reply_lines,
    parse_request,
)

# Strategies -----------------------------------------------------------------------------

# A key character: anything printable that is not whitespace (a key is one word).
KEY_CHARS = st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")
).filter(lambda ch: not ch.isspace())
# At most 4 UTF-8 bytes a character, so 64 characters never pass MAX_KEY_BYTES (256).
KEYS = st.text(KEY_CHARS, min_size=1, max_size=64)
# A value: any text without control characters except tab; spaces of every kind allowed.
VALUES = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")) | st.just("\t"),
    max_size=40,
)
CLOCKS = st.dictionaries(
    st.integers(0, 64), st.integers(0, 2**63 - 1), max_size=4
).map(VectorClock)
IDS = st.none() | st.integers(0, 10**6)
CONTEXTS = st.none() | st.builds(SessionContext, CLOCKS, CLOCKS, IDS)

REQUESTS = st.one_of(
    st.builds(Request, st.just("PUT"), KEYS, VALUES, CONTEXTS),
    st.builds(Request, st.sampled_from(["GET", "DEL"]), KEYS, st.none(), CONTEXTS),
    st.builds(Request, st.just("KEYS"), st.none() | KEYS, st.none(), CONTEXTS,
              st.none() | st.builds(wire.KeyPage, st.none() | KEYS,
                                    st.none() | st.integers(1, wire.DEFAULT_MAX_KEYS))
              .filter(lambda page: page.after is not None or page.limit is not None)),
    st.builds(
        Request, st.sampled_from(["STATUS", "PING", "HELP", "QUIT"]), st.none(), st.none(),
        CONTEXTS,
    ),
)

# Reply text and body lines: a line on the wire, so no CR/LF (nor other controls).
LINE_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=30)
EPOCHS = st.integers(0, 10**wire.MAX_NUMBER_DIGITS - 1)
METAS = st.none() | st.builds(ReplyMeta, CLOCKS, IDS, IDS, EPOCHS, IDS)
REPLIES = st.one_of(
    st.builds(Reply, st.sampled_from(sorted(wire.SINGLE_STATUSES)), LINE_TEXT, st.just(()),
              METAS),
    st.builds(
        Reply, st.sampled_from(sorted(wire.MULTILINE_STATUSES)), st.just(""),
        st.lists(LINE_TEXT, max_size=6).map(tuple), METAS,
    ),
)


def wire_error(line: str, limits: Limits = Limits()) -> WireError:
    with pytest.raises(WireError) as info:
        parse_request(line, limits)
    return info.value


def reply_from_bytes(data: bytes) -> Reply:
    """Feed the encoded reply line by line, as a client would, checking it ends exactly."""
    text = data.decode("utf-8")
    assert text.endswith("\r\n")
    parser = ReplyParser()
    lines = text.split("\r\n")[:-1]
    for line in lines[:-1]:
        assert parser.feed(line + "\r\n") is None
        assert not parser.idle
    reply = parser.feed(lines[-1] + "\r\n")
    assert reply is not None
    assert parser.idle
    return reply


# Requests: every command ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("PUT k v", Request("PUT", "k", "v")),
        ("put k v", Request("PUT", "k", "v")),
        ("Put Key Value", Request("PUT", "Key", "Value")),
        ("GET k", Request("GET", "k")),
        ("gEt MixedCase", Request("GET", "MixedCase")),
        ("DEL k", Request("DEL", "k")),
        ("del k", Request("DEL", "k")),
        ("KEYS", Request("KEYS")),
        ("keys pre", Request("KEYS", "pre")),
        ("STATUS", Request("STATUS")),
        ("status", Request("STATUS")),
        ("PING", Request("PING")),
        ("Ping", Request("PING")),
        ("HELP", Request("HELP")),
        ("help", Request("HELP")),
        ("QUIT", Request("QUIT")),
        ("quit", Request("QUIT")),
    ],
)
def test_every_command_parses_case_insensitively(line, expected):
    assert parse_request(line) == expected


def test_command_sets_and_request_kinds():
    assert wire.COMMANDS == {
        "PUT", "GET", "DEL", "KEYS", "STATUS", "PING", "HELP", "QUIT", "AUTH"
    }
    assert Request("GET", "k").is_read and not Request("GET", "k").is_write
    assert Request("KEYS").is_read
    assert Request("PUT", "k", "v").is_write and Request("DEL", "k").is_write
    for command in ("GET", "KEYS", "PUT", "DEL"):
        assert Request(command, "k").needs_coordinator
    for command in ("STATUS", "PING", "HELP", "QUIT", "AUTH"):
        request = Request(command)
        assert not (request.is_read or request.is_write or request.needs_coordinator)


def test_arguments_may_be_separated_by_several_spaces_and_tabs():
    assert parse_request("GET   k  ") == Request("GET", "k")
    assert parse_request("GET\tk") == Request("GET", "k")
    assert parse_request("KEYS \t p") == Request("KEYS", "p")
    assert parse_request("  PING") == Request("PING")
    assert parse_request("\tGET k") == Request("GET", "k")


def test_put_value_is_the_rest_of_the_line_with_its_spaces_and_tabs():
    assert parse_request("PUT k hello world") == Request("PUT", "k", "hello world")
    assert parse_request("PUT k  two leading") == Request("PUT", "k", " two leading")
    assert parse_request("PUT k trailing  ") == Request("PUT", "k", "trailing  ")
    assert parse_request("PUT k a\tb\t") == Request("PUT", "k", "a\tb\t")
    assert parse_request("PUT k \tx") == Request("PUT", "k", "\tx")
    assert parse_request("PUT k END") == Request("PUT", "k", "END")


def test_put_empty_value_needs_the_separating_space():
    assert parse_request("PUT k ") == Request("PUT", "k", "")
    assert parse_request("PUT k  ") == Request("PUT", "k", " ")
    assert wire_error("PUT k").code == Code.BADARGS
    # A tab is not the separator between key and value.
    assert wire_error("PUT k\tv").code == Code.BADARGS


def test_context_token_is_parsed_and_kept_on_the_request():
    request = parse_request("@r=1:3;w=1:2,2:1;via=2 GET k")
    assert request == Request(
        "GET", "k", None,
        SessionContext(VectorClock({1: 3}), VectorClock({1: 2, 2: 1}), 2),
    )
    assert request.context.requirement() == VectorClock({1: 3, 2: 1})
    assert parse_request("@r=-;w=-   put k v v") == Request(
        "PUT", "k", "v v", SessionContext()
    )
    # Missing fields are empty clocks / no via.
    assert parse_request("@ PING") == Request("PING", context=SessionContext())
    assert parse_request("@via= PING").context == SessionContext()


def test_with_context_replaces_only_the_context():
    request = Request("PUT", "k", "v")
    context = SessionContext(VectorClock({1: 1}))
    assert request.with_context(context) == Request("PUT", "k", "v", context)
    assert request.with_context(context).with_context(None) == request


def test_session_context_encoding():
    assert SessionContext().encode() == "@r=-;w=-"
    assert SessionContext(VectorClock({2: 5, 1: 3}), VectorClock({1: 1}), 3).encode() == (
        "@r=1:3,2:5;w=1:1;via=3"
    )


@given(REQUESTS)
def test_request_encode_round_trips_through_parse_request(request):
    line = request.encode()
    assert parse_request(line) == request
    # And through the bytes a telnet client sends (CRLF; LineReceiver removes the LF).
    assert parse_request(decode_line(line.encode("utf-8") + b"\r")) == request


def _parsed(line: str, limits: Limits):
    try:
        return parse_request(line, limits)
    except WireError as e:
        return e.code


@given(st.text(max_size=12) | st.text(KEY_CHARS, max_size=12),
       st.sampled_from(["", "@w=1:2 "]), st.integers(1, 16))
def test_a_plain_get_parses_as_the_general_path_would(rest, context, max_key_bytes):
    """"GET <key>" has a path of its own (the most common request); "get <key>" takes
    the general one: every line, bad keys, odd spacing and the key limit included,
    parses the same on both (or fails with the same code)."""
    limits = Limits(max_key_bytes=max_key_bytes)
    assert _parsed(f"{context}GET {rest}", limits) == _parsed(f"{context}get {rest}", limits)


@given(KEYS, VALUES)
def test_put_round_trip_keeps_the_value_exactly(key, value):
    assert parse_request(f"PUT {key} {value}") == Request("PUT", key, value)


# Requests: line handling ----------------------------------------------------------------


@pytest.mark.parametrize("line", ["", " ", "\t", "  \t ", "\r\n", "\n", " \r\n"])
def test_blank_line_is_none(line):
    assert parse_request(line) is None


def test_crlf_is_stripped():
    assert parse_request("GET k\r\n") == Request("GET", "k")
    assert parse_request("PUT k v v\r\n") == Request("PUT", "k", "v v")
    assert parse_request("PUT k \r\n") == Request("PUT", "k", "")


def test_decode_line_drops_one_trailing_cr_and_decodes_utf8():
    assert decode_line(b"GET k\r") == "GET k"
    assert decode_line(b"GET k") == "GET k"
    assert decode_line("PUT k caf\u00e9".encode()) == "PUT k caf\u00e9"
    assert decode_line(b"") == ""


@pytest.mark.parametrize("raw", [b"GET \xff", b"\xc3", b"PUT k \xe2\x82", b"\x80\r"])
def test_decode_line_rejects_non_utf8(raw):
    with pytest.raises(WireError) as info:
        decode_line(raw)
    assert info.value.code == Code.BADENCODING


# Requests: errors -----------------------------------------------------------------------


@pytest.mark.parametrize("line", ["FROB", "frob k", "GETX k", "@r=- NOPE k", "END"])
def test_unknown_command_is_badcmd(line):
    error = wire_error(line)
    assert error.code == Code.BADCMD
    assert "HELP" in error.message


def test_unknown_command_is_shortened_in_the_message():
    error = wire_error("X" * 500)
    assert error.code == Code.BADCMD
    assert len(error.message) < 100


@pytest.mark.parametrize(
    "line",
    [
        "PUT", "PUT ", "PUT k",
        "GET", "GET a b", "DEL", "DEL a b",
        "KEYS a b",
        "STATUS now", "PING pong", "HELP me", "QUIT now",
    ],
)
def test_wrong_argument_count_is_badargs(line):
    error = wire_error(line)
    assert error.code == Code.BADARGS
    assert "usage" in error.message


def test_context_without_command_is_badargs():
    assert wire_error("@r=-").code == Code.BADARGS
    assert wire_error("@r=-   ").code == Code.BADARGS


@pytest.mark.parametrize("key", ["", " ", "a b", "a\tb", "a\u00a0b", "a\u3000b"])
def test_check_key_rejects_empty_and_whitespace(key):
    with pytest.raises(WireError) as info:
        check_key(key)
    assert info.value.code == Code.BADKEY


@pytest.mark.parametrize("line", ["GET a\x01b", "DEL \x7f", "PUT k\x00 v", "KEYS a\x1b"])
def test_key_with_control_characters_is_badkey(line):
    assert wire_error(line).code == Code.BADKEY


def test_key_limit_is_in_utf8_bytes():
    limit = wire.MAX_KEY_BYTES
    assert limit == 256
    assert parse_request("GET " + "k" * limit).key == "k" * limit
    assert wire_error("GET " + "k" * (limit + 1)).code == Code.BADKEY
    # 128 two-byte characters are exactly 256 bytes; one more byte is over.
    assert parse_request("GET " + "\u00e9" * 128).key == "\u00e9" * 128
    error = wire_error("GET " + "\u00e9" * 128 + "x")
    assert error.code == Code.BADKEY
    assert "257 bytes" in error.message
    # 85 three-byte characters are 255 bytes (only 85 characters, far under 256).
    assert parse_request("DEL " + "\u20ac" * 85).key == "\u20ac" * 85
    assert wire_error("DEL " + "\u20ac" * 86).code == Code.BADKEY
    assert wire_error("KEYS " + "\U0001f600" * 65).code == Code.BADKEY
    assert wire_error("PUT " + "\U0001f600" * 65 + " v").code == Code.BADKEY


def test_key_limit_is_configurable():
    limits = Limits(max_key_bytes=4)
    assert parse_request("GET abcd", limits).key == "abcd"
    assert wire_error("GET abcde", limits).code == Code.BADKEY


def test_value_over_the_limit_is_toobig():
    limits = Limits(max_value_bytes=10)
    assert parse_request("PUT k " + "v" * 10, limits).value == "v" * 10
    error = wire_error("PUT k " + "v" * 11, limits)
    assert error.code == Code.TOOBIG
    assert "11 bytes" in error.message and "10 bytes" in error.message
    # Counted in UTF-8 bytes: 5 x two-byte character = 10 bytes.
    assert parse_request("PUT k " + "\u00e9" * 5, limits).value == "\u00e9" * 5
    assert wire_error("PUT k " + "\u00e9" * 5 + "x", limits).code == Code.TOOBIG


def test_default_value_limit():
    limit = wire.DEFAULT_MAX_VALUE_BYTES
    assert parse_request("PUT k " + "v" * limit).value == "v" * limit
    assert wire_error("PUT k " + "v" * (limit + 1)).code == Code.TOOBIG
    limits = Limits()
    assert limits.max_line_bytes == limit + wire.MAX_KEY_BYTES + wire.LINE_OVERHEAD_BYTES


@pytest.mark.parametrize("value", ["a\x00b", "\x1b[31mred", "bell\x07", "del\x7f", "nel\x85"])
def test_value_with_control_characters_is_badvalue(value):
    assert wire_error("PUT k " + value).code == Code.BADVALUE


def test_value_may_hold_tabs_and_unicode_spaces():
    assert parse_request("PUT k \ta\tb\t").value == "\ta\tb\t"
    assert parse_request("PUT k a\u00a0b\u3000c").value == "a\u00a0b\u3000c"


@pytest.mark.parametrize(
    "token",
    [
        "@x=1",               # unknown field
        "@r",                 # no '='
        "@=5",                # no name
        "@r=abc",             # not a clock
        "@w=1:2:3",           # not a clock
        "@r=1:1,1:2",         # replica twice
        "@r=-1:2",            # negative
        "@via=x",             # via not a number
        "@via=-1",
        "@via=\u0663",        # a non-ASCII digit is not a number
    ],
)
def test_bad_context_token_is_badcontext(token):
    assert wire_error(token + " GET k").code == Code.BADCONTEXT


def test_wire_error_reply():
    error = wire_error("GET")
    reply = error.reply()
    assert reply.is_error
    assert reply.error_code == Code.BADARGS
    assert reply.error_message == error.message
    assert reply.encode() == f"ERR BADARGS {error.message}\r\n".encode()
    assert str(error) == f"BADARGS {error.message}"


# Regression: these lines used to hit `assert match is not None` (an AssertionError out
# of lineReceived) because only space and tab were stripped around the command word.
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("\x0bPING", Request("PING")),
        ("PING\x0c", Request("PING")),
        ("GET\u00a0key", Request("GET", "key")),
        ("\u3000STATUS", Request("STATUS")),
        ("@r=- \x0cDEL k", Request("DEL", "k", context=SessionContext())),
        ("\x1cGET\x1dk\x1e", Request("GET", "k")),     # str.isspace, as str.split sees it
    ],
)
def test_any_whitespace_around_the_command_word(line, expected):
    assert parse_request(line) == expected


def test_a_context_followed_by_whitespace_alone_is_an_empty_command():
    error = wire_error("@r=- \x0b\x0c")
    assert (error.code, error.message) == (Code.BADCMD, "empty command; try HELP")


# Regression: int() of a 5000-digit string raises ValueError (Python's int max str
# digits), which escaped as a non-WireError.
@pytest.mark.parametrize(
    "token", ["@via=" + "9" * 5000, "@via=" + "9" * (wire.MAX_NUMBER_DIGITS + 1)]
)
def test_huge_number_in_a_context_is_badcontext(token):
    error = wire_error(token + " PING")
    assert error.code == Code.BADCONTEXT
    assert len(error.message) < 100


def test_numbers_up_to_max_digits_are_accepted():
    biggest = "9" * wire.MAX_NUMBER_DIGITS
    assert parse_request(f"@via={biggest} PING").context.via == int(biggest)
    assert wire.is_number(biggest)
    for text in ("", "-1", "1.0", "\u0663", "9" * (wire.MAX_NUMBER_DIGITS + 1)):
        assert not wire.is_number(text)


# Replies --------------------------------------------------------------------------------


def test_single_line_reply_encoding():
    assert Reply("OK").encode() == b"OK\r\n"
    assert Reply("PONG").encode() == b"PONG\r\n"
    assert Reply("NOTFOUND").encode() == b"NOTFOUND\r\n"
    assert Reply("VALUE", "a b").encode() == b"VALUE a b\r\n"
    # An empty value still has the space, so it differs from a bare status word.
    assert Reply("VALUE", "").encode() == b"VALUE \r\n"
    assert wire.error_reply(Code.BUSY, "go away").encode() == b"ERR BUSY go away\r\n"


def test_multiline_reply_gives_its_length_and_ends_with_end():
    reply = Reply("KEYS", lines=("a", "b"))
    assert reply.encode() == b"KEYS 2\r\na\r\nb\r\nEND\r\n"
    assert Reply("KEYS").encode() == b"KEYS 0\r\nEND\r\n"


def test_help_reply_round_trips():
    reply = Reply("HELP", lines=wire.HELP_LINES)
    assert reply_from_bytes(reply.encode()) == reply
    assert any(line.startswith("PUT") for line in wire.HELP_LINES)


def test_body_may_hold_end_and_empty_lines():
    reply = Reply("KEYS", lines=("END", "", "a", "END", ""))
    data = reply.encode()
    assert data == b"KEYS 5\r\nEND\r\n\r\na\r\nEND\r\n\r\nEND\r\n"
    assert reply_from_bytes(data) == reply


def test_meta_round_trip_including_here():
    meta = ReplyMeta(VectorClock({1: 2, 3: 4}), by=3, coord=3, epoch=5, here=1)
    assert meta.encode() == "@vc=1:2,3:4;by=3;here=1;coord=3;epoch=5"
    assert ReplyMeta.decode(meta.encode()) == meta
    reply = Reply("VALUE", "x y", meta=meta)
    assert reply.encode() == b"@vc=1:2,3:4;by=3;here=1;coord=3;epoch=5 VALUE x y\r\n"
    assert reply_from_bytes(reply.encode()) == reply
    keys = Reply("KEYS", lines=("a",), meta=meta)
    assert reply_from_bytes(keys.encode()) == keys


def test_meta_defaults():
    assert ReplyMeta().encode() == "@vc=-;epoch=0"
    assert ReplyMeta.decode("@vc=-") == ReplyMeta()
    assert ReplyMeta.decode("@") == ReplyMeta()
    assert Reply("OK").with_meta(ReplyMeta()).meta == ReplyMeta()


@given(REPLIES)
def test_reply_round_trips_through_reply_parser(reply):
    assert reply_from_bytes(reply.encode()) == reply
    assert parse_reply_lines(reply.encode_lines()) == reply


@given(st.lists(REPLIES, min_size=1, max_size=4))
def test_parser_reads_replies_back_to_back(replies):
    parser = ReplyParser()
    stream = b"".join(reply.encode() for reply in replies).decode("utf-8")
    parsed = []
    for line in stream.split("\r\n")[:-1]:
        reply = parser.feed(line)
        if reply is not None:
            parsed.append(reply)
    assert parsed == replies
    assert parser.idle


def test_error_reply_fields():
    reply = Reply("ERR", "QUORUM only 1 of 2 acks")
    assert reply.is_error
    assert reply.error_code == "QUORUM"
    assert reply.error_message == "only 1 of 2 acks"
    assert Reply("OK", "x").error_code is None
    assert Reply("OK", "x").error_message == ""


@pytest.mark.parametrize(
    "line",
    [
        "",
        "HUH",
        "ok",              # status words are upper case
        "KEYS",            # no count
        "KEYS x",
        "KEYS -1",
        "STATUS 1.5",
        "HELP \u0663",     # a non-ASCII digit
        "@vc=bad OK",
        "@nofield OK",
        "@vc=-;epoch=x OK",
        "@vc=- HUH",
        "KEYS " + "9" * 5000,
        "@vc=-;epoch=" + "9" * 5000 + " OK",
    ],
)
def test_bad_reply_header_raises_wire_error(line):
    with pytest.raises(WireError):
        ReplyParser().feed(line)


def test_missing_terminator_raises_wire_error():
    parser = ReplyParser()
    assert parser.feed("KEYS 1") is None
    assert parser.feed("a") is None
    with pytest.raises(WireError) as info:
        parser.feed("b")
    assert info.value.code == Code.BADARGS
    assert "END" in info.value.message


def test_parse_reply_lines_incomplete():
    with pytest.raises(WireError, match="incomplete"):
        parse_reply_lines(["KEYS 2", "a"])
    with pytest.raises(WireError, match="incomplete"):
        parse_reply_lines([])


def test_status_lines_round_trip():
    fields = {"role": "coordinator", "coordinator": "3", "peers": "1 up, 2 down", "empty": ""}
    lines = wire.status_lines(fields)
    assert lines == ("role coordinator", "coordinator 3", "peers 1 up, 2 down", "empty ")
    assert wire.parse_status_lines(lines) == fields
    assert list(wire.parse_status_lines(lines)) == list(fields)  # order kept
    reply = Reply("STATUS", lines=lines)
    assert wire.parse_status_lines(reply_from_bytes(reply.encode()).lines) == fields


@given(st.dictionaries(st.text(KEY_CHARS, min_size=1, max_size=10), LINE_TEXT, max_size=6))
def test_status_lines_round_trip_property(fields):
    assert wire.parse_status_lines(wire.status_lines(fields)) == fields


def test_auth_takes_the_rest_of_the_line_as_the_password():
    request = parse_request("auth  two words ")
    assert (request.command, request.value) == ("AUTH", "two words ")
    assert parse_request(request.encode()) == request
    with pytest.raises(WireError) as caught:
        parse_request("AUTH")
    assert caught.value.code == Code.BADARGS


def test_control_and_space_checks_match_unicode_categories_for_every_code_point():
    """The regexes in wire.py stand for unicodedata.category(ch) == "Cc" and
    str.isspace(): the same answer for every code point."""
    import unicodedata

    from replicad import wire as w

    wrong = []
    for cp in range(0x110000):
        ch = chr(cp)
        cc = unicodedata.category(ch) == "Cc"
        if (w._has_control(ch, False) != cc
                or w._has_control(ch, True) != (cc and ch != "\t")
                or (w._CONTROL_OR_SPACE.search(ch) is not None) != (cc or ch.isspace())):
            wrong.append(hex(cp))
    assert wrong == []


# Relaying a forwarded reply (wire.relay) ------------------------------------------------


@given(REPLIES, st.integers(1, 9))
def test_a_relayed_reply_is_the_coordinators_bytes_and_reads_as_the_reply(reply, here):
    """Whenever relay() takes a reply, passing it on is byte for byte what parsing it
    and encoding it again gave, and status, error, meta and body read the same."""
    if reply.meta is not None:
        reply = reply.with_meta(dataclasses.replace(reply.meta, here=here))
    relayed = wire.relay(reply.encode_lines(), here)
    assert relayed is not None
    assert relayed.encode() == parse_reply_lines(reply.encode_lines()).encode()
    assert (relayed.status, relayed.is_error, relayed.error_code, relayed.error_message) == (
        reply.status, reply.is_error, reply.error_code, reply.error_message)
    assert (relayed.meta, relayed.lines) == (reply.meta, reply.lines)


@pytest.mark.parametrize("lines", [
    ["@vc=3:1;by=3;here=3;coord=3;epoch=3 VALUE v"],      # names another replica: parse it
    ["@vc=3:1;by=3;here=12;coord=3;epoch=3 VALUE v"],     # 12 is not 1 (nor is 21)
    ["MAYBE so"],                                         # not a status
    ["KEYS 2", "a", "END"],                               # a line short
    ["KEYS 1", "a", "b"],                                 # no terminator
    ["KEYS x", "END"],
    ["VALUE v", "trailing"],
    [],
])
def test_a_reply_that_must_be_parsed_is_not_relayed(lines):
    assert wire.relay(lines, 1) is None


# KEYS pages: a prefix when the arguments are odd in number, then AFTER / LIMIT pairs ----


@pytest.mark.parametrize("line, request_", [
    ("KEYS p AFTER k", Request("KEYS", "p", page=wire.KeyPage("k", None))),
    ("KEYS AFTER k", Request("KEYS", None, page=wire.KeyPage("k", None))),
    ("keys limit 5", Request("KEYS", None, page=wire.KeyPage(None, 5))),
    ("KEYS p LIMIT 5 AFTER k", Request("KEYS", "p", page=wire.KeyPage("k", 5))),
    ("KEYS AFTER", Request("KEYS", "AFTER")),                 # one argument: a prefix
    ("KEYS LIMIT AFTER k", Request("KEYS", "LIMIT", page=wire.KeyPage("k", None))),
    (f"KEYS LIMIT {wire.DEFAULT_MAX_KEYS}",
     Request("KEYS", None, page=wire.KeyPage(None, wire.DEFAULT_MAX_KEYS))),
])
def test_keys_pages_parse(line, request_):
    assert parse_request(line) == request_
    assert parse_request(request_.encode()) == request_


@pytest.mark.parametrize("line, message", [
    ("KEYS a b", "usage: KEYS [prefix] [AFTER <key>] [LIMIT <n>]"),
    ("KEYS p AFTER k AFTER j", "usage: KEYS [prefix] [AFTER <key>] [LIMIT <n>]"),
    ("KEYS p SINCE k", "usage: KEYS [prefix] [AFTER <key>] [LIMIT <n>]"),
    ("KEYS LIMIT 0", f"LIMIT must be a number from 1 to {wire.DEFAULT_MAX_KEYS}, got '0'"),
    ("KEYS LIMIT -3", f"LIMIT must be a number from 1 to {wire.DEFAULT_MAX_KEYS}, got '-3'"),
    (f"KEYS LIMIT {wire.DEFAULT_MAX_KEYS + 1}",
     f"LIMIT must be a number from 1 to {wire.DEFAULT_MAX_KEYS}, "
     f"got '{wire.DEFAULT_MAX_KEYS + 1}'"),
])
def test_bad_keys_pages_are_badargs(line, message):
    with pytest.raises(WireError) as info:
        parse_request(line)
    assert (info.value.code, info.value.message) == (Code.BADARGS, message)


def test_a_keys_page_checks_its_key():
    with pytest.raises(WireError) as info:
        parse_request("KEYS AFTER " + "k" * 300)
    assert info.value.code == Code.BADKEY
