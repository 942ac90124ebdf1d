"""`python -m mmllm.generate ...`: kept for old commands; the same as `mmllm generate ...`."""

import sys

from mmllm.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
