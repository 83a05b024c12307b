import sys

from edgefleet.cloud.cli import main

sys.exit(main())
