"""Private storage: the device's local SQLite index and the shared SQLite helpers."""
