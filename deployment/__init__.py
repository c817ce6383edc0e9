"""What every process of a deployment stands on: its settings and its handle on the database.

Layering (tests/test_layering.py): `studies` is the core and imports none of the others;
`deployment` imports only `studies`; `workers` and `service` stand on both and never import each
other or `hdetach`; `hdetach` (the command line) may use them all.
"""
