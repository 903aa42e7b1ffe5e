"""`python -m fedc`: the same as the `fedc` command."""

import sys

from .cli import main

sys.exit(main())
