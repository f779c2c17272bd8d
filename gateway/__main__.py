"""Entry point for ``python -m gateway``: hands over to the command line."""

from gateway.cli import main

main()
