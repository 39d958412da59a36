"""Analyses of trained models (the paper's §3.1 layer probe)."""
