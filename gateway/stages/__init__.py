"""The path of a message, one module per stage: each does the I/O and leaves the decisions to ``domain``.

ingress (SMTP listeners) -> acceptance (stored with its Vorgang and pending copies) -> fanout (copies
into members' mailboxes); members' answers: ingress (MX) -> reply -> relay (to the back office);
flagsync carries read state between copies; reconcile brings copies in line after directory changes;
notices tell a back office of late or failed copies.
"""
