"""``python -m service`` runs the ``llmctv`` console script."""

import sys

from service.cli import main

if __name__ == "__main__":  # not when a spawned child process re-imports this module
    sys.exit(main())
