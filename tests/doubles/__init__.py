"""Test doubles of external services. Never imported by production code."""
