#!/usr/bin/env python3
"""Stage 3 of the HE benchmark harness (server_preprocess_model):
prepare the server's model (plan, engine caches) without any key.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark/, home of the cfsubmission library

from cfsubmission import stages

if __name__ == "__main__":
    sys.exit(stages.server_preprocess_model(sys.argv[1:]))
