"""Models: the Ollama store on disk and the GGUF facts read from a blob's header."""
