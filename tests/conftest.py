"""Shared pytest plugins for the peerpull test suite."""

pytest_plugins = ["tests.support.fixtures", "tests.support.fixtures_upstream"]
