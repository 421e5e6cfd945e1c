"""``python -m indexer``: the same commands as ``lexvla index``."""

import sys

from indexer.cli import main

sys.exit(main())
