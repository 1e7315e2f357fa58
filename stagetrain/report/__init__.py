"""Reading finished runs: ``stagetrain-report``, the sweep summary and its intervals."""
