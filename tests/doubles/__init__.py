"""Test doubles of outside systems that cannot run on the test machines (Consul, ...)."""
