"""The seven DVC stages; each module's `run` reads files and writes files."""
