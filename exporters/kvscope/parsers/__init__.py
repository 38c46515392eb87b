"""Pure parsers: text in, typed records out; bad input gives an error value, never an exception."""
