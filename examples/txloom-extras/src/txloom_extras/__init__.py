"""Example txloom extensions shipped by a separate distribution (see README.md)."""
