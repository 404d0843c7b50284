"""Benchmarks: ``python -m bench`` runs them all and writes bench/RESULTS.md (``--quick`` for a short run)."""
