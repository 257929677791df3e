#!/usr/bin/env python3
"""Stage 6 of the HE benchmark harness (client_encode_encrypt_input):
encrypt each photo's model input under the client's public key.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark/, home of the cfsubmission library

from cfsubmission import stages

if __name__ == "__main__":
    sys.exit(stages.client_encode_encrypt_input(sys.argv[1:]))
