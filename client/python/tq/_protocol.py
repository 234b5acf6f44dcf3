"""TQP/1 as proto/PROTOCOL.md writes it: command codes, field rules, and
the header codec (a msgpack array [1, command, field...])."""

import re

import msgpack

VERSION = 1

# section 4.1, client <-> broker
SUBMIT = 0x01
SUBMITTED = 0x02
GET = 0x03
RESULT = 0x04
STATE = 0x05
UNKNOWN = 0x06
STATUS = 0x07
STATUS_REPLY = 0x08
PING = 0x09
PONG = 0x0A
ERROR = 0x0B
CANCEL = 0x0C
REPLY = 0x10
QPUT = 0x11
QGET = 0x12
QITEM = 0x13
QSIZE = 0x14

# commands followed by a payload frame (section 4.1)
WITH_PAYLOAD = frozenset((SUBMIT, RESULT, STATUS_REPLY, REPLY, QPUT, QITEM))

MAX_HEADER = 131072
MAX_PRIORITY = 9
MAX_RETRIES = 1000
MAX_UINT32 = 2 ** 32 - 1

_ID = re.compile(r"[0-9A-Za-z_.-]{1,64}\Z", re.ASCII)
_NAME = re.compile(r"[0-9A-Za-z_.:@/-]{1,255}\Z", re.ASCII)


def valid_id(text):
    return isinstance(text, str) and bool(_ID.match(text))


def valid_name(text):
    return isinstance(text, str) and bool(_NAME.match(text))


def pack(obj):
    """One msgpack object; str as str, bytes as bin."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data):
    """Decodes one msgpack object. Text that is not UTF-8 keeps its bytes
    as surrogate escapes rather than failing; map keys may be any type."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False,
                           unicode_errors="surrogateescape")


def header(command, *fields):
    return pack([VERSION, command, *fields])


def decode(frames):
    """(command, fields, payload) of a message from the broker; raises
    ValueError with the reason for a malformed one."""
    if len(frames) not in (1, 2):
        raise ValueError("%d frames" % len(frames))
    head = frames[0]
    if len(head) > MAX_HEADER:
        raise ValueError("header of %d bytes" % len(head))
    try:
        fields = unpack(head)
    except Exception as exc:  # msgpack raises several types
        raise ValueError("header is not msgpack (%s: %s)"
                         % (type(exc).__name__, exc)) from None
    if (not isinstance(fields, list) or len(fields) < 2 or
            not isinstance(fields[0], int) or
            not isinstance(fields[1], int)):
        raise ValueError("header is not [version, command, ...]")
    if fields[0] != VERSION:
        raise ValueError("version %r" % (fields[0],))
    command = fields[1]
    has_payload = len(frames) == 2
    if has_payload != (command in WITH_PAYLOAD):
        raise ValueError("command 0x%02x with %d frames" % (command,
                                                            len(frames)))
    return command, fields[2:], frames[1] if has_payload else None
