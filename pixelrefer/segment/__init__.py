"""Marks to masks: the interface (base), SAM 2.1 (sam), GrabCut (grabcut) and choosing one (build)."""
