"""`cxr`: the command line for the serverless chest X-ray classifier."""
