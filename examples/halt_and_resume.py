"""Halt and resume a strategy with nothing but nats-py and the README's contract.

Usage: python examples/halt_and_resume.py STRATEGY [CONNECTION_FILE]
The connection file is written by `qmp up` (default .qmp/connection.json).
"""

import asyncio
import json
import ssl
import sys

import nats


async def main(strategy: str, connection: dict) -> None:
    auth = {}
    if connection["operator_user"]:
        auth = {"user": connection["operator_user"], "password": connection["operator_password"]}
    # Commands go to qmp.control.<your NATS user>.<strategy>: the server lets each user publish only there.
    control = f"qmp.control.{connection['operator_user'] or 'operator'}.{strategy}"
    if connection.get("tls_ca"):  # the stack's CA: TLS, and the server's certificate checked against it
        auth["tls"] = ssl.create_default_context(cafile=connection["tls_ca"])
    nc = await nats.connect(connection["nats_url"], **auth)
    decisions = await nc.subscribe(f"qmp.exec.{strategy}.orders")

    halt = {"command": "halt", "reason": "test", "command_id": "example-halt-1"}
    reply = await nc.request(control, json.dumps(halt).encode(), timeout=5)
    print("halt ->", reply.data.decode())

    # Every later order decision is a denial with its reason, until the resume.
    decision = json.loads((await decisions.next_msg(timeout=60)).data)
    while decision["event"] != "OrderDenied":
        decision = json.loads((await decisions.next_msg(timeout=60)).data)
    print("decision ->", decision["event"], decision["reason"])

    resume = {"command": "resume", "mode": "normal", "command_id": "example-resume-1"}
    reply = await nc.request(control, json.dumps(resume).encode(), timeout=5)
    print("resume ->", reply.data.decode())
    await nc.close()


if __name__ == "__main__":
    with open(sys.argv[2] if len(sys.argv) > 2 else ".qmp/connection.json") as handle:
        asyncio.run(main(sys.argv[1], json.load(handle)))
