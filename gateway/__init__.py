"""vorgang-gateway: shares a customer's Vorgänge across the members of a release group by mail."""

__version__ = "0.1.0"
