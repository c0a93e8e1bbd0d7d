"""Keeping a collection sound: verify (and repair) rows against files, re-embed with another model."""
