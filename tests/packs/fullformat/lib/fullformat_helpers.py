"""Shared code of the pack, importable because lib/ is on the Python path."""


def greeting(name: str) -> str:
    return f"hello {name}"
