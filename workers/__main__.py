"""``python -m workers worker|embed-cache ...``: the worker commands without the console script.

Equivalent to ``llmctv worker`` / ``llmctv embed-cache`` once ``service.cli`` registers them.
"""

from __future__ import annotations

import sys

from model.cli import main
from workers.cli import register_embed_cache, register_worker

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], extra=(register_worker, register_embed_cache)))
