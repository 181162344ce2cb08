#!/usr/bin/env python3
"""The Phase 3 `python scripts/process_folder.py --path DIR`: `facepipe ingest DIR --tenant demo --wait`.

Uploads every image under DIR, publishes one message per image, waits until the
pipeline has processed them and prints a summary (images, faces processed,
rejected, dup-skipped, DLQ). Dedup settings (DEDUP_MAX_HAMMING, ...) belong to the
workers: set them where the workers start (e.g. `DEDUP_MAX_HAMMING=3 facepipe up`).
"""

import argparse
import sys

from facepipe.cli.main import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True, help="folder (or file) of images")
    parser.add_argument("--tenant", default="demo", help="tenant id (default: demo)")
    parser.add_argument("--site", default="local")
    parser.add_argument("--no-wait", action="store_true", help="publish and return at once")
    parser.add_argument("--api", default=None, help="ops-api URL of a running `facepipe up`")
    args = parser.parse_args()
    argv = ["ingest", args.path, "--tenant", args.tenant, "--site", args.site]
    argv += [] if args.no_wait else ["--wait"]
    argv += ["--api", args.api] if args.api else []
    sys.exit(main(argv))
