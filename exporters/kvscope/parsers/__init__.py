"""Pure parsers: text in, typed records out. They never raise on bad input."""
