"""The seed's example of DESIGN.md §3 as plain data, shared by the pure and the CLI-level tests."""

from __future__ import annotations

# The people of the example and their addresses in config/example/directory.yaml.
ADDRESS = {
    "SB-A1": "sb-a1@kunde-a.example",
    "SB-A2": "sb-a2@kunde-a.example",
    "GF-A": "gf-a@kunde-a.example",
    "SB-B1": "sb-b1@kunde-b.example",
    "SB-B2": "sb-b2@kunde-b.example",
    "GF-B": "gf-b@kunde-b.example",
}

# §3, first table: release -> (primary, share_vorgaenge, members).
RELEASES = {
    "Kunde A Sachbearbeiter": (True, True, frozenset({"SB-A1", "SB-A2"})),
    "Kunde B Sachbearbeiter": (True, True, frozenset({"SB-B1", "SB-B2"})),
    "Geschäftsführer": (True, True, frozenset({"GF-A", "GF-B"})),
    "Kunde B mit GF": (False, True, frozenset({"SB-B1", "SB-B2", "GF-B"})),
}

# §3, second table (a message sent to or by ... is seen by ...), plus the two clerks it leaves out.
SEEN_BY = {
    "SB-A1": {"SB-A1", "SB-A2"},
    "SB-A2": {"SB-A1", "SB-A2"},
    "SB-B1": {"SB-B1", "SB-B2", "GF-B"},
    "SB-B2": {"SB-B1", "SB-B2", "GF-B"},
    "GF-A": {"GF-A", "GF-B"},
    "GF-B": {"GF-B", "GF-A", "SB-B1", "SB-B2"},
}
