"""Tests of the `webhook-relay` command line."""
