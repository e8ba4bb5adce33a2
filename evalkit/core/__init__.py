"""The leaf layer: records, errors, the registry pattern, stable hashes, the atomic writer. Imports no other evalkit
layer."""
