"""Media: where bytes become pixels. `image` decodes photos (the CLI's and the HTTP service's),
`video` opens, probes and reads clips. Nothing else in the backend decodes a file."""
