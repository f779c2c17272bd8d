"""Pure decisions of the gateway: no asyncio, no SQLAlchemy, no sockets."""
