"""The VM tests that go through the queue use the integration suite's fleet."""

from tests.integration.conftest import cluster, h1, hv_host, x1  # noqa: F401
