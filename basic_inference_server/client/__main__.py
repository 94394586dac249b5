"""``python -m basic_inference_server.client``: the ``bis`` command line."""

import sys

from .cli import main

sys.exit(main())
