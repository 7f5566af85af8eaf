"""Connect the published Python client (PyPI `rstmdb` 0.2.1) to a secured rstmdb.

Usage: python secure.py HOST PORT MODE [--token T] [--ca CA] [--cert CERT --key KEY]

MODE is a label for the output (token, tls, mtls). With the given credentials the script
authenticates (when a token is given), writes and reads back one instance, and then checks
that a client without the credential is refused. Exits 0 on success.
Run by tests/python_client.rs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback

from rstmdb import Client, ServerError

ORDER = {
    "states": ["pending", "paid"],
    "initial": "pending",
    "transitions": [{"from": "pending", "event": "PAY", "to": "paid"}],
}


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


async def run(a: argparse.Namespace) -> None:
    kw = {}
    if a.token:
        kw["token"] = a.token
    if a.ca:
        kw["ca_cert"] = a.ca
    if a.cert:
        kw["client_cert"] = a.cert
        kw["client_key"] = a.key
    machine = f"py-{a.mode}"
    async with Client(a.host, a.port, request_timeout=20, **kw) as c:
        check(await c.ping(), "ping")
        put = await c.put_machine(machine, 1, ORDER)
        check(put.machine == machine, f"put {put}")
        inst = await c.create_instance(machine, 1, instance_id=f"{machine}-1")
        res = await c.apply_event(inst.instance_id, "PAY")
        check(res.to_state == "paid", f"apply {res}")
        got = await c.get_instance(inst.instance_id)
        check(got.state == "paid", f"get {got}")

    # Without the credential that matters for this mode, the client must not get in.
    if a.mode == "token":
        async with Client(a.host, a.port, request_timeout=20) as anon:
            try:
                await anon.list_machines()
            except ServerError as e:
                check(e.code == "UNAUTHORIZED", f"anonymous: {e.code}")
            else:
                raise AssertionError("anonymous list_machines succeeded")
    else:
        refused = False
        bad = dict(kw)
        if a.mode == "tls":
            bad.pop("ca_cert", None)  # the system roots do not know our test CA
        else:
            bad.pop("client_cert", None)
            bad.pop("client_key", None)
        try:
            async with Client(a.host, a.port, request_timeout=5, connect_timeout=5, **bad) as c:
                await c.ping()
        except Exception:  # noqa: BLE001 - any refusal (ssl error, closed connection) is right
            refused = True
        check(refused, f"{a.mode}: a client without the credential got in")
    print(f"python client {a.mode}: OK")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("mode", choices=["token", "tls", "mtls"])
    p.add_argument("--token")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    a = p.parse_args()
    try:
        asyncio.run(run(a))
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
