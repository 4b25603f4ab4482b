"""`python -m webhook_relay.cli`: the same as the `webhook-relay` console script."""

import sys

from . import main

sys.exit(main())
