"""Data: toy sets, the embedded digits default, and loaders for files a user has."""
