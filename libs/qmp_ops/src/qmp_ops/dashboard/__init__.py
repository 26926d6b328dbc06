"""The dashboard: what a trader and a risk manager look at, live, in a browser, with the controls.

An aiohttp server (`qmp dashboard`) that reads only the bus (trading states, rollouts, risk snapshots,
portfolios, deployment events, services' health) and pushes changes to the page as server-sent events, so a
change on the bus is on screen within a second. Controls (halt, resume, resume safe, allocation, order size,
kill) are the control contract's requests, sent with the signed-in person's own NATS credentials: the page
can never do what that person's `qmp` could not, and the audit trail names them.

Signing in is with an operator's NATS user and password (those of `qmp up --operators`, or the admin's),
checked by connecting to NATS with them; the session is a random token in an HttpOnly, SameSite=Strict
cookie, held in memory (a restart signs everyone out). A control request must also carry the header
`X-QMP-Request`, which a page of another site cannot send.

Why not Streamlit (the seed's choice): its pages rerun a script per change and poll, and it has no sign-in
of its own short of an OpenID provider; here one process holds one NATS connection per person and pushes
each change as it happens.
"""

from qmp_ops.dashboard.server import create_app

__all__ = ["create_app"]
