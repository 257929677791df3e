#!/usr/bin/env python3
"""Stage 8 of the HE benchmark harness (client_decrypt_decode):
decrypt the packed pair scores with the client's secret key.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark/, home of the cfsubmission library

from cfsubmission import stages

if __name__ == "__main__":
    sys.exit(stages.client_decrypt_decode(sys.argv[1:]))
