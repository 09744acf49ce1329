"""The VM tests that go through the queue use the integration suite's fleet."""

from tests.integration.conftest import cluster, h1, hv_host  # noqa: F401
