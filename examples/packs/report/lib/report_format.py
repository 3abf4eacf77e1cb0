"""Shared by the pack's actions: lib/ is on the Python path of every Python action."""


def line(name: str, greeting: str) -> str:
    return f"{greeting}, {name}"
