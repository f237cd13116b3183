"""The refund story from the seed, told offline: fake services and a real crash."""
