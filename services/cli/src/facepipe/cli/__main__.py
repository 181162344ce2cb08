"""``python -m facepipe.cli`` = the ``facepipe`` console script."""

import sys

from facepipe.cli.main import main

sys.exit(main())
