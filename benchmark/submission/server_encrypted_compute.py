#!/usr/bin/env python3
"""Stage 7 of the HE benchmark harness (server_encrypted_compute):
encrypted inference of every photo and encrypted pair scores, public keys only.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark/, home of the cfsubmission library

from cfsubmission import stages

if __name__ == "__main__":
    sys.exit(stages.server_encrypted_compute(sys.argv[1:]))
