import sys

from dmmd.cli import main

sys.exit(main())
