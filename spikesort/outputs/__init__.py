"""What a finished sort gives the user: the result object, the curated reader, conversions, the report."""
