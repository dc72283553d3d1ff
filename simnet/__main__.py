"""``python -m lpnode.simnet run <scenario> --out DIR``."""

import sys

from .cli import main

sys.exit(main())
