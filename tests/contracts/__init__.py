"""Contract tests: one test class per port, run against every adapter of that port."""
