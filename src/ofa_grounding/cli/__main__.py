"""`python -m ofa_grounding.cli ...` (as torchrun launches it): the same as `ofa-ground ...`."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
