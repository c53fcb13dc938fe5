"""Extension images: references, registry access, image formats and the module cache."""
