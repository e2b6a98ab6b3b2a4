"""The offline cloud: moto for the AWS APIs plus real local execution of what moto does not run."""
