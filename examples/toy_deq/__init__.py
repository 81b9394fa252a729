"""A minimal deqkit application: a DEQ classifier of 2-D spirals (see docs/applications.md)."""
