"""One module per ``facepipe`` command (or per family: ``dlq``, ``delete``, ``dedup-*``).

Each module offers ``add_parser(subparsers)``, which adds its command's options and sets
``func`` to the function that runs it. Modules import what is heavy (OpenCV, the S3 and vector
store clients, local mode) inside the functions that need it: ``facepipe search`` or
``facepipe stats`` must not pay for what ``facepipe ingest`` loads.
"""
