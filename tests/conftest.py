"""Fixture modules shared by the test suites, loaded as plugins (not re-exported).

Plugins must be named here, in the top-level conftest: pytest refuses `pytest_plugins`
in a conftest below the rootdir's.
"""

pytest_plugins = [
    "tests.integration.amqp_fixtures",
    "tests.integration.worker_kit",
]
