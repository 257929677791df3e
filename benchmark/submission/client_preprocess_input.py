#!/usr/bin/env python3
"""Stage 5 of the HE benchmark harness (client_preprocess_input):
align each photo and resize it to the model input, on the client.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark/, home of the cfsubmission library

from cfsubmission import stages

if __name__ == "__main__":
    sys.exit(stages.client_preprocess_input(sys.argv[1:]))
