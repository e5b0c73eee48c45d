"""Job queue adapters other than the embedded one (which lives in the SQLite state file)."""
