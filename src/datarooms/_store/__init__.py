"""Private storage: the device's local SQLite index of decrypted data (see datarooms._sqlite)."""
