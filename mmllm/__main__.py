"""`python -m mmllm SUBCOMMAND ...`: the same as the `mmllm` command."""

import sys

from mmllm.cli import main

sys.exit(main())
