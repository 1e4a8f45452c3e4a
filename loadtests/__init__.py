"""Load tests and the chaos suite (run with loadtests/run and loadtests/chaos)."""
