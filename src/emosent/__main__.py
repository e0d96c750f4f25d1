import sys

from emosent.cli import main

sys.exit(main())
