"""``python -m rstscope.kafka.local ...``: the same CLI as ``rstscope local-kafka ...``."""

import sys

from rstscope.kafka.local.cli import main

sys.exit(main(sys.argv[1:]))
