"""Cross-check rstmdb against the published Python client (PyPI `rstmdb` 0.2.1).

Usage: python session.py HOST PORT

Runs one session through the client's public API and asserts every result. Exits 0 on
success; any failed assertion, server error or protocol error exits non-zero.
Run by tests/python_client.rs.
"""

from __future__ import annotations

import asyncio
import sys
import traceback

import rstmdb
from rstmdb import Client, ServerError

ORDER = {
    "states": ["pending", "paid", "shipped", "cancelled"],
    "initial": "pending",
    "transitions": [
        {"from": "pending", "event": "PAY", "to": "paid"},
        {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.amount > 0"},
        {"from": ["pending", "paid"], "event": "CANCEL", "to": "cancelled"},
    ],
}


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


async def expect_error(coro, code: str) -> ServerError:
    try:
        await coro
    except ServerError as e:
        check(e.code == code, f"expected {code}, got {e.code}: {e.message}")
        return e
    raise AssertionError(f"expected ServerError {code}, call succeeded")


async def next_event(events, what: str):
    try:
        return await asyncio.wait_for(events.__anext__(), timeout=10)
    except asyncio.TimeoutError:
        raise AssertionError(f"no event within 10 s: {what}") from None


async def session(host: str, port: int) -> None:
    check(rstmdb.__version__ == "0.2.1", f"client version {rstmdb.__version__}")
    async with Client(host, port, request_timeout=20) as c:  # connect = HELLO handshake
        check(await c.ping(), "ping")
        info = await c.info()
        check(info["server_name"] == "rstmdb", f"info {info}")
        check(info["protocol_version"] == 1, f"info {info}")

        # Machines
        put = await c.put_machine("py-order", 1, ORDER)
        check(put.created and put.machine == "py-order" and put.version == 1, f"put {put}")
        check(len(put.stored_checksum) == 64, f"sha-256 checksum {put.stored_checksum}")
        again = await c.put_machine("py-order", 1, ORDER)
        check(not again.created and again.stored_checksum == put.stored_checksum, f"{again}")
        other = dict(ORDER, states=ORDER["states"] + ["refunded"])
        await expect_error(c.put_machine("py-order", 1, other), "MACHINE_VERSION_EXISTS")
        got = await c.get_machine("py-order", 1)
        check(got.checksum == put.stored_checksum, f"get_machine {got}")
        check(got.definition["transitions"][0]["from"] == ["pending"], f"{got.definition}")
        machines = await c.list_machines()
        check({"machine": "py-order", "versions": [1]} in machines, f"list_machines {machines}")
        await expect_error(c.get_machine("py-nope", 1), "MACHINE_NOT_FOUND")

        # Instances
        inst = await c.create_instance(
            "py-order", 1, instance_id="py-1", initial_ctx={"customer": "alice"}
        )
        check(inst.instance_id == "py-1" and inst.state == "pending", f"create {inst}")
        # No initial_ctx: the client omits it; GET must still validate (ctx is an object).
        gen = await c.create_instance("py-order", 1)
        check(len(gen.instance_id) == 36, f"generated id {gen.instance_id}")
        g = await c.get_instance(gen.instance_id)
        check(g.ctx == {} and g.state == "pending", f"get generated {g}")
        await expect_error(
            c.create_instance("py-order", 1, instance_id="py-1"), "INSTANCE_EXISTS"
        )
        await expect_error(c.create_instance("py-nope", 1), "MACHINE_NOT_FOUND")

        # Watch from a second connection, then apply on the first.
        async with Client(host, port, request_timeout=20) as w:
            sub = await w.watch_instance("py-1")
            check(sub.instance_id == "py-1" and sub.current_state == "pending", f"{sub}")
            check(sub.current_wal_offset == inst.wal_offset, f"{sub} vs {inst}")
            events = w.events()
            res = await c.apply_event(
                "py-1", "PAY", payload={"amount": 10}, idempotency_key="py-pay-1"
            )
            check(res.applied and res.from_state == "pending" and res.to_state == "paid", f"{res}")
            check(res.ctx == {"customer": "alice", "amount": 10}, f"ctx {res.ctx}")
            ev = await next_event(events, "PAY on py-1")
            check(ev.subscription_id == sub.subscription_id, f"event {ev}")
            check(ev.instance_id == "py-1" and ev.machine == "py-order" and ev.version == 1, f"{ev}")
            check(ev.wal_offset == res.wal_offset, f"event offset {ev.wal_offset} vs {res.wal_offset}")
            check(ev.from_state == "pending" and ev.to_state == "paid" and ev.event == "PAY", f"{ev}")
            check(ev.payload == {"amount": 10}, f"event payload {ev.payload}")
            check(ev.ctx == {"customer": "alice", "amount": 10}, f"event ctx {ev.ctx}")

            # watch_all with a filter on the same watcher connection
            wall = await w.watch_all(machines=["py-order"], to_states=["shipped"])
            check(wall.subscription_id != sub.subscription_id, f"{wall}")
            shipped = await c.apply_event("py-1", "SHIP", expected_state="paid")
            check(shipped.to_state == "shipped", f"{shipped}")
            seen = {}
            for _ in range(2):  # one copy per matching subscription
                e = await next_event(events, "SHIP on py-1")
                seen[e.subscription_id] = e
            check(set(seen) == {sub.subscription_id, wall.subscription_id}, f"{seen}")
            check(all(e.wal_offset == shipped.wal_offset for e in seen.values()), f"{seen}")

            un = await w.unwatch(sub.subscription_id)
            check(un.removed and un.subscription_id == sub.subscription_id, f"unwatch {un}")
            un2 = await w.unwatch("sub-unknown")
            check(not un2.removed, f"unwatch unknown {un2}")
            await expect_error(w.watch_instance("py-missing"), "INSTANCE_NOT_FOUND")

        # Idempotent replay and errors
        replay = await c.apply_event(
            "py-1", "PAY", payload={"amount": 10}, idempotency_key="py-pay-1"
        )
        check(not replay.applied and replay.wal_offset == res.wal_offset, f"replay {replay}")
        await expect_error(c.apply_event("py-1", "PAY"), "INVALID_TRANSITION")
        await expect_error(c.apply_event("py-1", "CANCEL", expected_state="paid"), "CONFLICT")
        await expect_error(c.apply_event("py-missing", "PAY"), "INSTANCE_NOT_FOUND")
        got1 = await c.get_instance("py-1")
        check(got1.state == "shipped" and got1.ctx["amount"] == 10, f"get {got1}")

        # Listing
        lst = await c.list_instances(machine="py-order")
        ids = [i.id for i in lst.instances]
        check(lst.total == 2 and ids == sorted(ids), f"list {lst}")
        check("py-1" in ids and gen.instance_id in ids, f"list ids {ids}")
        page = await c.list_instances(limit=1)
        check(len(page.instances) == 1 and page.has_more and page.total == 2, f"page {page}")
        shipped_only = await c.list_instances(state="shipped")
        check([i.id for i in shipped_only.instances] == ["py-1"], f"{shipped_only}")

        # WAL
        wal = await c.wal_read(0, limit=100)
        recs = wal["records"]
        types = [r["entry"]["type"] for r in recs]
        check(types[0] == "put_machine", f"wal types {types}")
        check(types.count("create_instance") == 2 and types.count("apply_event") == 2, f"{types}")
        offsets = [r["offset"] for r in recs]
        check(offsets == sorted(offsets) and offsets[0] == 1, f"offsets {offsets}")
        page1 = await c.wal_read(0, limit=2)
        check(len(page1["records"]) == 2, f"wal page {page1}")
        page2 = await c.wal_read(page1["next_offset"], limit=2)
        check(page2["records"][0]["offset"] == offsets[2], f"wal page 2 {page2}")
        stats = await c.wal_stats()
        check(stats.entry_count == len(recs), f"wal_stats {stats} vs {len(recs)} records")
        check(stats.io_stats.bytes_written > 0, f"{stats}")

        # Delete
        d = await c.delete_instance("py-1")
        check(d["deleted"] is True and d["instance_id"] == "py-1", f"delete {d}")
        d2 = await c.delete_instance("py-1")
        check(d2["wal_offset"] == d["wal_offset"], f"delete again {d2}")
        await expect_error(c.get_instance("py-1"), "INSTANCE_NOT_FOUND")
        await expect_error(c.delete_instance("py-never"), "INSTANCE_NOT_FOUND")
        after = await c.list_instances()
        check(after.total == 1, f"list after delete {after}")

        # Admin
        comp = await c.compact()
        check("snapshots_created" in comp, f"compact {comp}")
        await expect_error(c.flush_all(), "BAD_REQUEST")
        check(await c.ping(), "still connected")


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    try:
        asyncio.run(asyncio.wait_for(session(host, port), timeout=90))
    except Exception:
        traceback.print_exc()
        return 1
    print("python client session: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
