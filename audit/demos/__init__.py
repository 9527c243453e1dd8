"""Demo datasets with known errors, built offline from real images, so audit quality can be measured anywhere."""
