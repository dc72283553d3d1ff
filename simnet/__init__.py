"""Many-node simulations on one machine (the simnet issue; not built yet)."""
