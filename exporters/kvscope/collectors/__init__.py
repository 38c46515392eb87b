"""Collectors: the contract (base.py), the registry of names (registry.py), one module each."""
