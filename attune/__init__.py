"""Attune worker: runs untrusted automation actions in a bubblewrap + seccomp sandbox.

Importing this package has no side effects; the exec path imports only what it needs.
"""

__version__ = "0.1.0"
