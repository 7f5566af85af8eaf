#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/seeds/<target>/: small, valid, hand-made
inputs that give libFuzzer a head start (real frames, requests for every op, guards from
docs/guards.md, definitions, WAL segment images). Rerun after changing it:

    python3 fuzz/make_seeds.py

Byte layouts follow protocol.md §2 (frames) and docs/wal-format.md (WAL records); the
CRC-32C here is written from its definition so the seeds do not borrow the code under test.
"""
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")


def _crc_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


TABLE = _crc_table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value


def js(v):
    return json.dumps(v, separators=(",", ":")).encode()


def frame(payload, flags=1, ext=b"", crc=None):
    if crc is None:
        crc = crc32c(payload) if flags & 1 else 0
    return (b"RCPX" + struct.pack(">HHHII", 1, flags, len(ext), len(payload), crc)
            + ext + payload)


def req(rid, op, params=None):
    v = {"type": "request", "id": rid, "op": op}
    if params is not None:
        v["params"] = params
    return v


ORDER = {
    "states": ["pending", "paid", "shipped", "cancelled"],
    "initial": "pending",
    "transitions": [
        {"from": "pending", "event": "PAY", "to": "paid"},
        {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.amount > 0"},
        {"from": ["pending", "paid"], "event": "CANCEL", "to": "cancelled"},
    ],
}

REQUESTS = {
    "hello": req("1", "HELLO", {"protocol_version": 1, "client_name": "seed",
                                "wire_modes": ["binary_json", "jsonl"],
                                "features": ["idempotency", "batch", "wal_read"]}),
    "auth": req("2", "AUTH", {"method": "bearer", "token": "secret"}),
    "ping": req("3", "PING"),
    "bye": req("4", "BYE"),
    "info": req("5", "INFO", {}),
    "put_machine": req("6", "PUT_MACHINE", {"machine": "order", "version": 1,
                                            "definition": ORDER}),
    "get_machine": req("7", "GET_MACHINE", {"machine": "order", "version": 1}),
    "list_machines": req("8", "LIST_MACHINES", {}),
    "create_instance": req("9", "CREATE_INSTANCE", {
        "instance_id": "o-1", "machine": "order", "version": 1,
        "initial_ctx": {"amount": 5, "tags": ["a"]}, "idempotency_key": "k-1"}),
    "get_instance": req("10", "GET_INSTANCE", {"instance_id": "o-1"}),
    "list_instances": req("11", "LIST_INSTANCES", {"machine": "order", "state": "paid",
                                                   "limit": 10, "offset": 0, "after": "o-0"}),
    "delete_instance": req("12", "DELETE_INSTANCE", {"instance_id": "o-1",
                                                     "idempotency_key": "d-1"}),
    "apply_event": req("13", "APPLY_EVENT", {
        "instance_id": "o-1", "event": "PAY", "payload": {"amount": 7.5},
        "expected_state": "pending", "expected_wal_offset": 3, "event_id": "e-1",
        "idempotency_key": "a-1"}),
    "batch": req("14", "BATCH", {"mode": "atomic", "ops": [
        {"op": "CREATE_INSTANCE", "params": {"instance_id": "b-1", "machine": "order",
                                             "version": 1}},
        {"op": "APPLY_EVENT", "params": {"instance_id": "b-1", "event": "PAY"}},
        {"op": "GET_INSTANCE", "params": {"instance_id": "b-1"}},
        {"op": "DELETE_INSTANCE", "params": {"instance_id": "b-1"}}]}),
    "batch_operations": req("15", "BATCH", {"operations": [
        {"op": "GET_INSTANCE", "params": {"instance_id": "x"}}]}),
    "snapshot_instance": req("16", "SNAPSHOT_INSTANCE", {"instance_id": "o-1"}),
    "wal_read": req("17", "WAL_READ", {"from_offset": 1, "limit": 100}),
    "wal_stats": req("18", "WAL_STATS", {}),
    "compact": req("19", "COMPACT", {"force_snapshot": True}),
    "watch_instance": req("20", "WATCH_INSTANCE", {"instance_id": "o-1",
                                                   "include_ctx": True, "from_offset": 1}),
    "watch_all": req("21", "WATCH_ALL", {"machines": ["order"], "from_states": ["pending"],
                                         "to_states": ["paid"], "events": ["PAY"],
                                         "include_ctx": False, "from_offset": 1}),
    "unwatch": req("22", "UNWATCH", {"subscription_id": "sub-1"}),
    "flush_all": req("23", "FLUSH_ALL", {}),
    "params_null": req("24", "GET_MACHINE", None),
    "unknown_op": req("25", "NOPE", {}),
}

GUARDS = [
    "ctx.amount > 0",
    "ctx.a > 1e3",
    "5 < ctx.a",
    "!(ctx.a == 5)",
    "ctx.a && ctx.b || !ctx.c",
    "ctx.items.length >= 2 && ctx.items[0] == \"x\"",
    "payload.amount <= ctx.limit",
    "ctx.name != \"caf\\u00e9\" && ctx.flag == true",
    "ctx.x == null || ctx.y == -0.5",
    "((((ctx.a))))",
]
GUARD_CTX = {"amount": 5, "a": 2000, "b": True, "c": False, "items": ["x", "y"],
             "limit": 10, "name": "café", "flag": True, "x": None, "y": -0.5}
GUARD_PAYLOAD = {"amount": 3}

DEFINITIONS = {
    "readme": {"states": ["pending", "paid", "shipped"], "initial": "pending",
               "transitions": [{"from": "pending", "event": "PAY", "to": "paid"},
                               {"from": "paid", "event": "SHIP", "to": "shipped",
                                "guard": "ctx.amount > 0"}]},
    "order": ORDER,
    "guarded_alternatives": {
        "states": ["new", "small", "large"], "initial": "new",
        "transitions": [
            {"from": "new", "event": "SIZE", "to": "large", "guard": "payload.n > 100"},
            {"from": "new", "event": "SIZE", "to": "small", "guard": "ctx.n > 0"},
            {"from": "new", "event": "SIZE", "to": "small"}]},
    "counter": {"states": ["on"], "initial": "on",
                "transitions": [{"from": "on", "event": "inc", "to": "on"}]},
    "meta": {"states": ["a", "b"], "initial": "a", "meta": {"owner": "seed", "z": [1, 2]},
             "transitions": [{"from": ["a", "b"], "event": "FLIP", "to": "b",
                              "guard": "ctx.s == \"x\""}], "extra": 1},
    "empty_transitions": {"states": ["a"], "initial": "a", "transitions": []},
}


def wal_record(seq, payload, flags=0, term=0):
    """Version 1 (24-byte header) for term 0, version 2 (32 bytes, with the term) otherwise."""
    version = 1 if term == 0 else 2
    head = b"RWAL" + bytes([version, flags]) + b"\0\0" + struct.pack("<IQ", len(payload), seq)
    if term:
        head += struct.pack("<Q", term)
    return head + struct.pack("<I", crc32c(payload, crc32c(head))) + payload


WAL_ENTRIES = [
    {"type": "put_machine", "machine": "order", "version": 1,
     "definition_hash": "0" * 64, "definition": ORDER},
    {"type": "create_instance", "instance_id": "o-1", "machine": "order", "version": 1,
     "initial_state": "pending", "initial_ctx": {"amount": 5}, "idempotency_key": "k-1",
     "created_at": 1700000000000},
    {"type": "apply_event", "instance_id": "o-1", "machine": "order", "version": 1,
     "event": "PAY", "from_state": "pending", "to_state": "paid", "payload": {"p": 1.25},
     "ctx": {"amount": 5, "p": 1.25}, "event_id": "e-1", "idempotency_key": "a-1",
     "updated_at": 1700000000001},
    {"type": "delete_instance", "instance_id": "o-1", "idempotency_key": "d-1",
     "updated_at": 1700000000002},
    {"type": "batch", "entries": [
        {"type": "create_instance", "instance_id": "b-1", "machine": "order", "version": 1,
         "initial_state": "pending", "initial_ctx": {}, "created_at": 1700000000003}]},
    {"type": "flush_all", "timestamp": 1700000000004},
]


BACKUP_RECORDS = [
    {"t": "machine", "machine": "order", "version": 1, "checksum": "00" * 32,
     "definition": DEFINITIONS[next(iter(DEFINITIONS))], "wal_offset": 1},
    {"t": "instance", "instance": {"id": "o-1", "machine": "order", "version": 1,
                                   "state": "pending", "ctx": {"n": 1}, "last_wal_offset": 2,
                                   "created_at": 1, "updated_at": 1, "deleted": False}},
    {"t": "idempotency", "scope": "c\u0000k1", "record": {"fingerprint": "f", "result": {},
                                                         "expires_at": 9, "wal_offset": 2}},
    {"t": "wal", "offset": 1, "entry": WAL_ENTRIES[0]},
]


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    shutil.rmtree(SEEDS, ignore_errors=True)
    big = bytes([0x80])  # limit knob: the protocol's 16 MiB
    small = bytes([8])  # limit knob: 16 bytes, so oversize paths are reachable

    ping, hello = js(REQUESTS["ping"]), js(REQUESTS["hello"])
    for chunk in (0, 1, 7):
        c = bytes([chunk])
        write("frame_decode", f"ping_chunk{chunk}", big + c + frame(ping))
        write("frame_decode", f"pipelined_chunk{chunk}",
              big + c + frame(hello) + frame(ping) + frame(js(REQUESTS["apply_event"])))
    write("frame_decode", "no_crc", big + b"\0" + frame(ping, flags=0))
    write("frame_decode", "stream_flags_and_ext", big + b"\3" + frame(ping, flags=0x000D,
                                                                       ext=b"\1\2\3\4"))
    write("frame_decode", "mixed_line_then_frame",
          big + b"\5" + b"\r\n" + ping + b"\n" + frame(hello) + b" \n" + ping + b"\r\n")
    write("frame_decode", "oversized_for_small_limit", small + b"\2" + frame(hello))
    write("frame_decode", "truncated", big + b"\0" + frame(hello)[:-3])
    write("frame_decode", "bad_crc", big + b"\0" + frame(ping, crc=1))

    for chunk in (0, 1, 5):
        c = bytes([chunk])
        write("jsonl_decode", f"two_lines_chunk{chunk}", big + c + hello + b"\n" + ping + b"\n")
    write("jsonl_decode", "crlf_and_blank_lines", big + b"\3" + b"\n  \r\n" + ping + b"\r\n\t\n")
    write("jsonl_decode", "unterminated", big + b"\0" + ping)
    write("jsonl_decode", "too_long_for_small_limit", small + b"\4" + hello + b"\n")

    for name, r in REQUESTS.items():
        write("request_decode", name, js(r))
    write("request_decode", "pretty_printed", json.dumps(REQUESTS["create_instance"],
                                                        indent=2).encode())
    # A number past f64 in a field the op ignores (once accepted by the fast path only).
    write("request_decode", "huge_number_in_unknown_field",
          b'{"type":"request","id":"9","op":"CREATE_INSTANCE","params":{"machine":"m",'
          b'"version":1,"initali_ctx":{"amount":5.6e66666}}}')

    tail = b"\n" + js(GUARD_CTX) + b"\n" + js(GUARD_PAYLOAD)
    for i, g in enumerate(GUARDS):
        write("guard", f"guard{i:02}", g.encode() + tail)

    for name, d in DEFINITIONS.items():
        write("machine_definition", name, js(d))

    records = [wal_record(i + 1, js(e)) for i, e in enumerate(WAL_ENTRIES)]
    whole = b"".join(records)
    write("wal_record", "all_entry_types", b"\0" + whole)
    write("wal_record", "all_entry_types_fixcrc", b"\1" + whole)
    write("wal_record", "torn_tail", b"\0" + whole[:-5])
    write("wal_record", "zero_tail", b"\0" + records[0] + b"\0" * 40)
    write("wal_record", "wrong_seq_fixcrc", b"\1" + records[0] + wal_record(9, js(WAL_ENTRIES[1])))
    mixed = b"".join(wal_record(i + 1, js(e), term=(i % 2) * (i + 1))
                     for i, e in enumerate(WAL_ENTRIES))
    write("wal_record", "mixed_v1_v2", b"\0" + mixed)
    write("wal_record", "mixed_v1_v2_torn_header", b"\0" + mixed + wal_record(
        len(WAL_ENTRIES) + 1, b"x", term=7)[:28])
    # Mode byte 4: first seq 3, so this segment starts in the middle of the log.
    write("wal_record", "first_seq_3", b"\4" + b"".join(
        wal_record(3 + i, js(e)) for i, e in enumerate(WAL_ENTRIES[2:4])))

    # backup_file, mode bit 0: the rest is a body, wrapped in a valid container by the target;
    # bit 1: encrypted. One record of each kind, in the order verify requires.
    body = b"".join(js(r) + b"\n" for r in BACKUP_RECORDS)
    for mode, name in ((1, "body_plain"), (3, "body_encrypted"), (5, "body_plain_flip1")):
        write("backup_file", name, bytes([mode]) + body)
    write("backup_file", "body_unterminated", b"\1" + body[:-1])
    write("backup_file", "not_a_backup", b"\0RSTMDB\0B\1\0")


if __name__ == "__main__":
    main()
