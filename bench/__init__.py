"""`make bench`: the relay's cost, side by side with the reference verifier and the
raw-client floor."""
