"""Tests that run against a real kube-apiserver (see tests/kube_harness.py)."""
