"""Shared code of the PVA-SAE pipeline. Knows no phase: phases import from here, never the reverse."""
