"""Teacher backends behind one interface: ``generate(records) -> iterator of generation records``."""
