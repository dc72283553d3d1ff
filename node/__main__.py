"""``python -m lpnode.node``: the ``lpnode`` command without the console script."""

import sys

from lpnode.node.cli import main

sys.exit(main())
