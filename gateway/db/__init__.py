"""Storage: SQLAlchemy models, the engine and session factory, repository functions and migrations.

SQLAlchemy stays inside this package; the rest of the gateway sees dataclasses from ``gateway.domain``.
"""
