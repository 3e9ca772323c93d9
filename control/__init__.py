"""The AWS control plane's operator commands (Route53 records of the edges)."""
