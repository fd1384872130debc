"""Store port and adapters: KV with compare-and-set, a lock with TTL, registrations."""
