"""Test runner port and adapters: run a suite against a URL, write JUnit XML."""
