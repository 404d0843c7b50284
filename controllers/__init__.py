"""Per-pulse controllers: pure objects, estimate in, next pulse intensity out."""
