"""Exporting a student where people deploy it: GGUF (llama.cpp, Ollama) and CTranslate2 directories.

:mod:`potstill.export.gguf` writes a Hugging Face Llama-family directory as one GGUF file.
"""
