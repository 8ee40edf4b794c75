"""``python -m rstscope.geo fetch|lookup``: the same as ``rstscope geo``."""

import sys

from rstscope.geo.cli import main

sys.exit(main(sys.argv[1:]))
