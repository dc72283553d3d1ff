"""Spot checks, output comparison and the reputation store (the reputation issue; not built yet)."""
