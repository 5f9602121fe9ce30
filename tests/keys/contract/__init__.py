"""The key-provider contract, run against every provider."""
