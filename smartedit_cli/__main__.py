"""``python -m smartedit_cli ...`` (also ``accelerate launch -m smartedit_cli train ...``)."""

import sys

from smartedit_cli.main import main

sys.exit(main())
