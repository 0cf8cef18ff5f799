import sys

from ddlm.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
