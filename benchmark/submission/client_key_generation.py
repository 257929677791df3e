#!/usr/bin/env python3
"""Stage 2 of the HE benchmark harness (client_key_generation):
generate the client's secret, public and evaluation keys.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark/, home of the cfsubmission library

from cfsubmission import stages

if __name__ == "__main__":
    sys.exit(stages.client_key_generation(sys.argv[1:]))
