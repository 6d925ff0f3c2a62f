"""What a finished sort gives the user: the reader of its folder, the result object, the curated
reader, conversions, the report and its figures."""
