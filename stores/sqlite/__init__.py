"""The embedded SQLite adapters: state store, job queue and sessions in one database file."""
