#!/usr/bin/env python3
"""`make models`: fetch the model packs' files into MODELS_DIR (see facepipe.vision.models.fetch)."""

import sys

from facepipe.vision.models.fetch import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
