"""The CDK app and the pure wiring the local mode shares with it."""
