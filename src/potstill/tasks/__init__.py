"""Reference tasks shipped with potstill (offline domains, their graders and data generators)."""
