"""An empty program: what start-up costs on its own (bench_run.py subtracts it)."""
