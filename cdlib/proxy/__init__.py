"""Proxy port and adapters: render, validate, swap, reload, drain; probe lives in the core."""
