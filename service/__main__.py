"""``python -m service`` runs the ``llmctv`` console script."""

import sys

from service.cli import main

sys.exit(main())
