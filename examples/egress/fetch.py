"""Fetch a URL (an egress action: run with `attune exec --network egress`)."""

import urllib.request


def run(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return {"status": response.status, "body": response.read(200).decode().strip()}
