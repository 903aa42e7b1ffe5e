"""`python -m fedc`: the same as the `fedc` command."""

from .cli import entry

entry()
