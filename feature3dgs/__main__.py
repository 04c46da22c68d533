"""``python -m feature3dgs``: the same as the ``feature3dgs`` command."""

import sys

from feature3dgs.cli.main import main

sys.exit(main())
