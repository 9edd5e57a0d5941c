"""Encryption at rest of stored dumps (docs/encryption.md): the sealed stream format and the key ring."""
