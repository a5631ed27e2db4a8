"""Prefect flows that run the DVC pipeline's stages as tasks (scheduling, retries, records)."""
