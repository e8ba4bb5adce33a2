import sys

from evalkit.app.cli import main

sys.exit(main())
