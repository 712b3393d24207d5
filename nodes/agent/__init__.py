"""Rig-side code: runs on the GPU host, imports nothing from Django."""
