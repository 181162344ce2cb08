#!/usr/bin/env python3
"""The Phase 3 `python scripts/publish_test_message.py`: a thin wrapper of `facepipe publish-test`.

Uploads a real sample photo (insightface's t1.jpg, 6 faces) to the raw bucket and
publishes the Phase 3 ingest message for it; prints

    ✅ Published test message to stream 'face-processing-queue'
       Message ID: ...
       Field: message
       Payload: {...}

Options: --tenant T (default demo), --runbook-payload (the runbook's literal example,
whose image does not exist, so it lands in the DLQ), --api URL. Finds Redis/S3 through
a running `facepipe up`, else through REDIS_URL, MINIO_ENDPOINT, ...
"""

import sys

from facepipe.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["publish-test", *sys.argv[1:]]))
