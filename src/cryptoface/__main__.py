import sys

from cryptoface.cli import main

sys.exit(main())
