"""Estimators: pure, synchronous, chunk-in/estimate-out objects with explicit state."""
