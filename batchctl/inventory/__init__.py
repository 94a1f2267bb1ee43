"""Machines discovered over HTTP, merged into the fleet (SPEC §7)."""
