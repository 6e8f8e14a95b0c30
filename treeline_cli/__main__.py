import sys

from treeline_cli.main import main

sys.exit(main())
