"""The ground both paths stand on: the ports, the models, and one adapter per backend.

- `ports.py`: the Protocols (state store, job queue, vector index, embedder, embedding cache, content
  source) and the records they exchange; `events.py` and `sessions.py`: the event and session models;
  `errors.py`: the root of eventrag's errors.
- `embedding.py` (sentence-transformers, the embedding cache), `sparse.py` (BM25), `qdrant.py` (the
  vector index), `sqlite/` (the embedded state, queue and sessions), `dynamodb/` and `sqs.py` (AWS).

`ingest/` (the write path) and `retrieval/` (the read path) import this package and never each other;
this package imports neither, nor `app/`. `tests/test_layout.py` keeps it so.
"""
