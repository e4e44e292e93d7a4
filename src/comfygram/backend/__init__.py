"""The backend: system of record and REST API."""
