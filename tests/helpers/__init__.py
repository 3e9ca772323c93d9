"""What the tests share: real processes, stand-ins, generated media."""
