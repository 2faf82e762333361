"""Development fixtures: the demo/test Ollama store, synthetic models and network-namespace test hosts."""
