"""Re-embed a tenant's stored faces with another model pack and switch its searches to them.

- :mod:`.options`: how a run behaves (and its command-line options);
- :mod:`.crops`: stored crop (S3) in, vector of the new pack out;
- :mod:`.backfill`: the migration itself (backfill, catch-up, atomic switch, settle; rollback);
- ``python -m facepipe.ops_api.reembed --tenant T --pack P``: one run, what the operator's
  Job runs (in the ops-api image: it has the models, S3 and the vector store) and what
  ``facepipe reembed`` runs locally; the ops-api's ``POST /migrations/{tenant}`` runs the same
  inside a local stack that holds the embedded vector store.

Nothing is imported here: ``facepipe -h`` reads the options without loading models.
"""
