"""Venues as their vendors define them, shared by the services that talk to them (execution trades, the
collector reads bars): how a ccxt exchange is configured (`ccxt_exchange`), a venue's credentials
(`credentials`), and fake venues on loopback (`fake_alpaca`, `fake_exchange`) that answer with the shapes
the vendors document, so the real client libraries are what the tests, the benchmarks and the demo use.
No QMP message or rule lives here."""
