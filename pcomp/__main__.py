import sys

from pcomp.cli import main

sys.exit(main())
