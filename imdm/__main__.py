import sys

from imdm.cli import main

sys.exit(main())
