"""Generation methods; each module exposes one stage function."""
