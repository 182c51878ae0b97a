import sys

from metapl.commands.cli import main

sys.exit(main())
