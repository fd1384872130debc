"""Helpers shared by the test suites: test images and a private registry."""
