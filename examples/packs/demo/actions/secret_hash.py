import hashlib

from attune_secrets import attune_secret


def run(password: str, key_name: str = "api_token") -> dict[str, str]:
    """sha256("<password>:<keystore secret>"): proves both secrets arrived, shows neither"""
    token = attune_secret(key_name)
    return {"sha256": hashlib.sha256(f"{password}:{token}".encode()).hexdigest()}
