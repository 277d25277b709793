"""`python -m worker --port N`: the stand-in worker without the `tiergate` command."""

import sys

from worker.cli import catch_signals_early, main

catch_signals_early()  # before the server's heavy imports: a SIGTERM during start-up still ends cleanly
sys.exit(main())
