"""Device meshes and sharding rules (DESIGN.md section 6)."""
